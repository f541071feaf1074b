"""Checkpoint I/O: the training state written atomically, read back safely (``weights_only``), the fallback to
the newest readable earlier checkpoint of a run, and the random state every rank's streams continue from."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import storage
from pipeline.errors import SslpipeError

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` under a temporary name, then rename: a crash never leaves a half-written checkpoint."""
    with storage.atomic_writer(path.parent, path.name) as handle:
        torch.save(state, handle)


def load_checkpoint(directory: str | Path) -> dict:
    path = Path(directory) / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SslpipeError(f"{path}: checkpoint file missing; delete the run's folder to start afresh") from None
    except Exception as exn:
        raise SslpipeError(f"{path}: unreadable checkpoint ({exn}); delete it to start afresh") from None


def checkpoint_paths(filesystem: Any, folder: str) -> list[str]:
    """The ``checkpoint_*`` folders of a run's ``folder`` in pyarrow ``filesystem``, oldest first (Ray Train's names
    sort by time); none when the folder does not exist."""
    import pyarrow.fs

    found = filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    return sorted(
        info.path
        for info in found
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")
    )


def run_folder(checkpoint: Any) -> str:
    """The run folder that Ray Train ``checkpoint`` lies in (the parent of its ``checkpoint_*`` folder)."""
    return checkpoint.path.rstrip("/").rsplit("/", 1)[0]


def restore_state(checkpoint: Any) -> dict:
    """The state in Ray Train ``checkpoint``; if that file is unreadable, the state of the newest readable
    checkpoint before it in the same run folder (Ray keeps ``num_to_keep`` of them), with a warning naming the
    bad one. Raises naming every unreadable file when none is left."""
    from ray.train import Checkpoint

    folder = run_folder(checkpoint)
    earlier = [path for path in checkpoint_paths(checkpoint.filesystem, folder) if path < checkpoint.path][::-1]
    errors = []
    for candidate in [checkpoint, *(Checkpoint(path, filesystem=checkpoint.filesystem) for path in earlier)]:
        try:
            with candidate.as_directory() as directory:
                state = load_checkpoint(directory)
        except SslpipeError as exn:
            errors.append(str(exn))
            continue
        if errors:
            log.warning("resuming from the earlier checkpoint %s: %s", candidate.path, "; ".join(errors))
        return state
    raise SslpipeError(f"{'; '.join(errors)}; no earlier checkpoint in {folder} is readable")


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global random generators: torch's (and ``device``'s, on CUDA), numpy's and Python's, in a
    form ``torch.load(weights_only=True)`` reads back."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            **numpy_state,
            "state": {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"]},
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Continue every generator :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            **numpy_state,
            "state": {
                "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
                "pos": numpy_state["state"]["pos"],
            },
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
