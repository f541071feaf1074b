"""Where files live (shards, checkpoints, exports): local folders, ``file://`` and any fsspec URL (``s3://``,
``gs://``, ...), or, for reading shards, ``pipe:``.

Every file is written by :func:`atomic_writer`, so an interrupted writer never leaves a file that looks whole.
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


def absolute(location: str | os.PathLike) -> str:
    """A local folder made absolute (Ray workers and Tune trials run in other folders); a URL as it is."""
    return str(local_path(location).absolute()) if is_local(location) else str(location)


def join(location: str | os.PathLike, name: str) -> str:
    """``location/name`` for a local folder (absolute path) or a URL prefix."""
    if is_local(location):
        return str(local_path(location).absolute() / name)
    return str(location).rstrip("/") + "/" + name


@contextlib.contextmanager
def atomic_writer(location: str | os.PathLike, name: str) -> Iterator[BinaryIO]:
    """The one way files are written: a binary file for ``location/name`` that appears under its name only when
    the block exits cleanly. Locally it is a temporary file beside the target, renamed; for a URL a local
    temporary file, uploaded whole (object stores put whole objects atomically)."""
    local = is_local(location)
    directory = local_path(location) if local else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    # closed by the `with` below; its name outlives it for the rename
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{name}.", suffix=".tmp", delete=False)  # noqa: SIM115
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if directory is not None:
            os.replace(handle.name, directory / name)
        else:
            fs, path = fsspec.core.url_to_fs(join(location, name))
            fs.put_file(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def names(location: str | os.PathLike, pattern: str) -> list[str]:
    """Names of the files in ``location`` (a folder or URL prefix; none if it does not exist) matching glob
    ``pattern``."""
    fs, root = fsspec.core.url_to_fs(absolute(location))
    fs.invalidate_cache()  # object stores' listings are cached per process
    return sorted(path.rsplit("/", 1)[-1] for path in fs.glob(f"{root.rstrip('/')}/{pattern}"))


def remove(location: str | os.PathLike, files: list[str]) -> None:
    """Delete ``files`` (names) from ``location``."""
    fs, root = fsspec.core.url_to_fs(absolute(location))
    for name in files:
        fs.rm_file(f"{root.rstrip('/')}/{name}")


def reader(url: str | os.PathLike) -> contextlib.AbstractContextManager[BinaryIO]:
    """The file at ``url`` (a path or URL) open for reading, streamed."""
    return fsspec.open(absolute(url), "rb")


def read_bytes(url: str) -> bytes:
    with reader(url) as handle:
        return handle.read()
