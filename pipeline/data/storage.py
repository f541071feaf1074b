"""Where shards live: local folders, ``file://`` and any fsspec URL (``s3://``, ``gs://``, ...), or ``pipe:``.

Local files are written under a temporary name and renamed, so an interrupted writer never leaves a file that
looks whole. Object stores put whole objects atomically already.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import fsspec

# webdataset 1.0.2 has no opener for object stores; route them through fsspec (s3fs, gcsfs, adlfs when installed).
# (``webdataset.gopen`` the attribute is the function; the module holds the scheme table.)
wds_gopen = importlib.import_module("webdataset.gopen")
FSSPEC_SCHEMES = ("s3", "s3a", "gcs", "az", "abfs", "abfss", "memory")


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw) -> BinaryIO:
    return fsspec.open(url, mode).open()


for _scheme in FSSPEC_SCHEMES:
    wds_gopen.gopen_schemes.setdefault(_scheme, _fsspec_open)


def is_local(location: str | os.PathLike) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return urlparse(str(location)).scheme in ("", "file")


def local_path(location: str | os.PathLike) -> Path:
    text = str(location)
    return Path(urlparse(text).path if text.startswith("file://") else text)


def join(location: str | os.PathLike, name: str) -> str:
    """``location/name`` for a local folder (absolute path) or a URL prefix."""
    if is_local(location):
        return str(local_path(location).absolute() / name)
    return str(location).rstrip("/") + "/" + name


@contextlib.contextmanager
def atomic_writer(location: str | os.PathLike, name: str) -> Iterator[BinaryIO]:
    """Binary file for ``location/name``; it appears under its name only when the block exits cleanly."""
    if not is_local(location):
        with fsspec.open(join(location, name), "wb") as handle:
            yield handle
        return
    directory = local_path(location)
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, directory / name)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def read_bytes(url: str) -> bytes:
    if is_local(url):
        return local_path(url).read_bytes()
    with fsspec.open(url, "rb") as handle:
        return handle.read()
