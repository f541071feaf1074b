"""Test helpers shared across modules."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from pipeline.data import ShardLoader

# the end-to-end tests' small CNN and heads (seconds per epoch of the synthetic shards)
TINY_MODEL = ["model.width=8", "model.embed_dim=32", "model.head_hidden=64", "model.head_dim=32"]
GATE_SEED = 0  # the learning gate's runs (tests/test_learning_gate.py), measured over seeds 0-2


def copied_store(template: Path, folder: Path) -> str:
    """The URI of ``folder/mlflow.db``, a copy of the migrated empty store ``template`` (migrating one: ~4 s)."""
    shutil.copy(template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def read_split(location: Path, split: str, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sample of ``split`` in source order: ``(images (N, C, H, W), labels (N,), indices (N,))``."""
    options = dict(rank=0, world_size=1, num_workers=0, shuffle=False, drop_last=False) | kwargs
    batches = list(ShardLoader(location, split, 512, **options))
    images, labels, indices = (torch.cat(column).numpy() for column in zip(*batches, strict=True))
    order = np.argsort(indices)
    return images[order], labels[order], indices[order]


def when_epochs_logged(
    tracking_uri: str, name: str, epochs: int, process: subprocess.Popen | None = None, timeout_s: float = 300
) -> str:
    """The run id of ``name`` once its first ``epochs`` epochs are in MLflow (while ``process`` runs)."""
    client, deadline = MlflowClient(tracking_uri), time.monotonic() + timeout_s
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        experiment = client.get_experiment_by_name("sslpipe")
        query = f"tags.`sslpipe.run_name` = '{name}'"
        runs = client.search_runs([experiment.experiment_id], query) if experiment else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= epochs:
            return runs[0].info.run_id
        time.sleep(0.2)
    output = process.communicate(timeout=60)[0][-3000:] if process and process.poll() is not None else ""
    raise AssertionError(f"run {name} did not log {epochs} epochs within {timeout_s} s\n{output}")


def rewrite_shard(shards: Path, name: str, edit) -> None:
    """Rewrite shard ``name`` member by member (``edit(member_name, data)`` returns new bytes, or None to drop the
    member) and record its new size and hash in the manifest: a shard that a buggy writer produced."""
    path = shards / name
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = edit(member.name, data)
            if data is not None:
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    raw = json.loads((shards / "manifest.json").read_text())
    entry = next(s for s in raw["splits"]["train"]["shards"] if s["name"] == name)
    entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (shards / "manifest.json").write_text(json.dumps(raw))


def kill_a_train_worker(ray) -> int:
    """Kill a live Ray Train worker of the local ``ray`` by PID (SIGKILL, as the OOM killer or a lost node would);
    its PID."""
    from ray.util.state import list_actors

    workers = list_actors(
        address=ray.get_runtime_context().gcs_address,
        detail=True,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    pid = max(actor.pid for actor in workers)
    os.kill(pid, signal.SIGKILL)
    return pid


WITHOUT_SSLPIPE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pipeline", "augment"):
            raise ImportError(f"{name}: this process must load exports without sslpipe")
sys.meta_path.insert(0, Block())
"""  # the start of a script that must not import sslpipe (installed in the environment, so blocked)

LIBRARY_ALONE = (
    WITHOUT_SSLPIPE
    + """
import json, os, torch
for folder, inputs, outputs in zip(*[iter(sys.argv[1:])] * 3):
    entry = json.load(open(os.path.join(folder, "encoder.json")))["backbone"]
    os.chdir(folder)
    scope = {}
    exec(entry["load"], scope)
    model = scope["model"]
    if "missing" in scope:  # torchvision: only the classifier keeps its initial weights
        assert {key.rsplit(".", 1)[0] for key in scope["missing"]} == {entry["classifier"]}, scope["missing"]
        assert not scope["unexpected"], scope["unexpected"]
        model.set_submodule(entry["classifier"], torch.nn.Identity())
    mean, std = (torch.tensor(entry["input"]["normalize"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        torch.save(model.eval()((torch.load(inputs) - mean) / std), outputs)
"""
)


def features_with_the_library_alone(*exports: tuple[Path, torch.Tensor]) -> list[torch.Tensor]:
    """For each ``(export_dir, images)``, features ``(B, D)`` of ``images`` ``(B, C, H, W)`` in [0, 1] by the backbone
    of ``export_dir``, loaded as its ``encoder.json`` says with torchvision or timm alone, all in one process where
    sslpipe cannot be imported."""
    arguments, outputs = [], []
    for export_dir, images in exports:
        inputs, output = Path(export_dir) / "library-alone-in.pt", Path(export_dir) / "library-alone-out.pt"
        torch.save(images, inputs)
        arguments += [str(Path(export_dir).resolve()), str(inputs.resolve()), str(output.resolve())]
        outputs.append(output)
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_ALONE, *arguments], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(output) for output in outputs]


TINY_MAE = [  # MAE on a one-block, 16-wide ViT with patches of 7 px (28 px images: 16 patches), for steps in tests
    "method.name=mae",
    "model.encoder=timm:vit_tiny_patch16_224",
    "model.backbone_args={patch_size: 7, depth: 1, embed_dim: 16, num_heads: 2}",
    "method.decoder_dim=16",
    "method.decoder_depth=1",
    "augment.preset=crop",
]


def names_an_encoder(overrides: list[str]) -> bool:
    """Whether job ``overrides`` choose an encoder (else the tests' small CNN is added)."""
    return any(override.startswith("model.encoder=") for override in overrides)
