"""Exported encoders, usable without sslpipe's training code:

* ``encoder.pt2``: ``torch.export`` program with a dynamic batch dimension;
  ``torch.export.load(path).module()(x)`` maps float ``(B, C, H, W)`` in [0, 1] to ``(B, D)``.
* ``encoder.safetensors`` + ``encoder.json`` (spec, input shape, normalisation, embedding dim, method, config,
  manifest hash): :func:`load_encoder` rebuilds a regular ``nn.Module`` from them for fine-tuning.
* the same encoder as a registered MLflow PyTorch model (see :mod:`pipeline.track`).

Every file is written under a temporary name and renamed, then loaded back and checked to embed like the trained
encoder before anything is registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import SslpipeError
from pipeline.models import EncoderSpec, build_encoder

PT2, WEIGHTS, META = "encoder.pt2", "encoder.safetensors", "encoder.json"


def example_input(spec: EncoderSpec, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, spec.channels, spec.image_size, spec.image_size)


def export_encoder(encoder: nn.Module, spec: EncoderSpec, out_dir: str | Path, metadata: dict) -> dict[str, Path]:
    """Write the three forms of ``encoder`` into ``out_dir``; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.cpu().eval().to(memory_format=torch.contiguous_format)
    example = example_input(spec)
    with torch.no_grad():
        dim = encoder(example).shape[1]
    paths = {"pt2": out / PT2, "weights": out / WEIGHTS, "meta": out / META}
    tmp = {name: path.with_name(f".tmp-{path.name}") for name, path in paths.items()}
    program = torch.export.export(encoder, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp["pt2"])
    weights = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(weights, tmp["weights"], metadata={"format": "pt"})
    meta = {
        "spec": spec.to_dict(), "embedding_dim": dim,
        "input": {"shape": ["B", spec.channels, spec.image_size, spec.image_size], "dtype": "float32",
                  "range": [0.0, 1.0], "normalization": "inside the encoder: (x - mean) / std"},
        **metadata,
    }
    tmp["meta"].write_text(json.dumps(meta, indent=2, default=str))
    for name, path in paths.items():
        tmp[name].replace(path)
    verify_export(encoder, out, example)
    return paths


def verify_export(encoder: nn.Module, out_dir: str | Path, example: torch.Tensor) -> None:
    """Load both exported forms from ``out_dir`` and check they embed ``example`` as ``encoder`` (eval mode) does;
    raises naming the file that does not. Runs before anything is registered."""
    out = Path(out_dir)
    with torch.no_grad():
        expected = encoder.eval()(example)
        try:
            loaded = {out / PT2: torch.export.load(out / PT2).module()}
        except Exception as exn:  # noqa: BLE001 - torch.export raises many kinds for a damaged file
            raise SslpipeError(f"{out / PT2}: the export does not load ({exn})") from None
        loaded[out / WEIGHTS] = load_encoder(out).eval()
        for path, module in loaded.items():
            if not torch.allclose(module(example), expected, rtol=1e-4, atol=1e-5):
                raise SslpipeError(f"{path}: the exported encoder does not reproduce the trained one")


def load_encoder(path_or_uri: str | Path) -> nn.Module:
    """A trainable ``nn.Module`` (train mode) from an export folder, or an MLflow ``models:/``/``runs:/`` URI
    whose model carries ``encoder.json`` and ``encoder.safetensors``."""
    text = str(path_or_uri)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        from pipeline.track import download

        folder = download(text)
    else:
        folder = Path(text)
    metas = [folder] if (folder / META).is_file() else sorted(p.parent for p in folder.rglob(META))
    if not metas:
        raise SslpipeError(f"{path_or_uri}: no {META} found; pass an export folder or an sslpipe model URI")
    root = metas[0]
    try:
        meta = json.loads((root / META).read_text())
        spec = EncoderSpec.from_dict(meta["spec"])
        weights = load_file(root / WEIGHTS)
    except (OSError, ValueError, KeyError, TypeError) as exn:
        raise SslpipeError(f"{root}: unreadable export ({exn}); export the encoder again") from None
    encoder, _ = build_encoder(spec)
    encoder.load_state_dict(weights)
    return encoder.train()
