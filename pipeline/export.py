"""Exported encoders, usable without sslpipe's training code, in a folder or under a URL prefix (``s3://...``):

* ``encoder.pt2``: ``torch.export`` program with a dynamic batch dimension;
  ``torch.export.load(path).module()(x)`` maps float ``(B, C, H, W)`` in [0, 1] to ``(B, D)``.
* ``encoder.safetensors`` + ``encoder.json`` (spec, input shape, normalisation, embedding dim, method, config,
  manifest hash): :func:`load_encoder` rebuilds a regular ``nn.Module`` from them for fine-tuning.
* the same encoder as a registered MLflow PyTorch model (see :mod:`pipeline.track`).

Every file is written atomically (a local one under a temporary name, then renamed), then loaded back and checked
to embed like the trained encoder before anything is registered.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import urlparse

import torch
from fsspec.registry import known_implementations
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from pipeline.data import storage
from pipeline.errors import SslpipeError
from pipeline.models import EncoderSpec, build_encoder

PT2, WEIGHTS, META = "encoder.pt2", "encoder.safetensors", "encoder.json"


def example_input(spec: EncoderSpec, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, spec.channels, spec.image_size, spec.image_size)


def export_encoder(encoder: nn.Module, spec: EncoderSpec, out: str | Path, metadata: dict) -> dict[str, str]:
    """Write the three forms of ``encoder`` to folder or URL prefix ``out``; returns their locations by kind
    (``pt2``, ``weights``, ``meta``)."""
    encoder = encoder.cpu().eval().to(memory_format=torch.contiguous_format)
    example = example_input(spec)
    with torch.no_grad():
        dim = encoder(example).shape[1]
    program = io.BytesIO()
    torch.export.save(torch.export.export(encoder, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      program)
    meta = {
        "spec": spec.to_dict(), "embedding_dim": dim,
        "input": {"shape": ["B", spec.channels, spec.image_size, spec.image_size], "dtype": "float32",
                  "range": [0.0, 1.0], "normalization": "inside the encoder: (x - mean) / std"},
        **metadata,
    }
    files = {
        PT2: program.getvalue(),
        WEIGHTS: save_safetensors({k: v.contiguous() for k, v in encoder.state_dict().items()}, {"format": "pt"}),
        META: json.dumps(meta, indent=2, default=str).encode(),
    }
    for name, data in files.items():
        with storage.atomic_writer(out, name) as handle:
            handle.write(data)
    verify_export(encoder, out, example)
    return {kind: storage.join(out, name) for kind, name in (("pt2", PT2), ("weights", WEIGHTS), ("meta", META))}


def exported_files(location: str | Path, names: tuple[str, ...] = (WEIGHTS, META)) -> dict[str, bytes]:
    """The content of export files ``names`` in ``location``, by name."""
    return {name: storage.read_bytes(storage.join(location, name)) for name in names}


def verify_export(encoder: nn.Module, out: str | Path, example: torch.Tensor) -> None:
    """Load both exported forms from ``out`` and check they embed ``example`` as ``encoder`` (eval mode) does;
    raises naming the file that does not. Runs before anything is registered."""
    pt2 = storage.join(out, PT2)
    with torch.no_grad():
        expected = encoder.eval()(example)
        try:
            loaded = {pt2: torch.export.load(io.BytesIO(storage.read_bytes(pt2))).module()}
        except Exception as exn:  # noqa: BLE001 - torch.export raises many kinds for a damaged file
            raise SslpipeError(f"{pt2}: the export does not load ({exn})") from None
        loaded[storage.join(out, WEIGHTS)] = _load(str(out)).eval()
        for location, module in loaded.items():
            if not torch.allclose(module(example), expected, rtol=1e-4, atol=1e-5):
                raise SslpipeError(f"{location}: the exported encoder does not reproduce the trained one")


def load_encoder(location: str | Path) -> nn.Module:
    """A trainable ``nn.Module`` (train mode) from an export folder (or one holding it) or URL prefix, or an MLflow
    URI (``models:/``, ``runs:/``, ...) whose model carries ``encoder.json`` and ``encoder.safetensors``."""
    text = str(location)
    if storage.is_local(text):
        return _load(_holding_export(storage.local_path(text), text))
    if urlparse(text).scheme in known_implementations:
        return _load(text)
    from pipeline.track.tracker import downloaded  # MLflow only for its own URIs

    with downloaded(text) as folder:
        return _load(_holding_export(folder, text))


def _holding_export(folder: Path, location: str) -> str:
    """``folder``, or the first folder below it that holds an export."""
    if (folder / META).is_file():
        return str(folder)
    found = sorted(path.parent for path in folder.rglob(META))
    if not found:
        raise SslpipeError(f"{location}: no {META} found; pass an export folder or an sslpipe model URI")
    return str(found[0])


def _load(location: str) -> nn.Module:
    try:
        files = exported_files(location)
    except FileNotFoundError:
        raise SslpipeError(f"{location}: no {META} and {WEIGHTS} here; pass an export folder or an sslpipe model "
                           "URI") from None
    except OSError as exn:
        raise SslpipeError(f"{location}: unreadable export ({exn}); export the encoder again") from None
    return encoder_from_files(files, location)[0]


def encoder_from_files(files: dict[str, bytes], location: str) -> tuple[nn.Module, EncoderSpec]:
    """``(encoder in train mode, its spec)`` rebuilt from the contents of an export's ``encoder.json`` and
    ``encoder.safetensors`` (read from ``location``, which errors name)."""
    try:
        spec = EncoderSpec.from_dict(json.loads(files[META])["spec"])
        weights = load_safetensors(files[WEIGHTS])
    except (ValueError, KeyError, TypeError) as exn:
        raise SslpipeError(f"{location}: unreadable export ({exn}); export the encoder again") from None
    encoder, _ = build_encoder(spec)
    encoder.load_state_dict(weights)
    return encoder.train(), spec
