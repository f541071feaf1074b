"""Exported encoders, usable without sslpipe's training code, in a folder or under a URL prefix (``s3://...``):

* ``encoder.pt2``: ``torch.export`` program with a dynamic batch dimension;
  ``torch.export.load(path).module()(x)`` maps float ``(B, C, H, W)`` in [0, 1] to ``(B, D)``.
* ``encoder.safetensors`` + ``encoder.json`` (spec, input shape, normalisation, embedding dim, method, config,
  manifest hash): :func:`load_encoder` rebuilds a regular ``nn.Module`` from them for fine-tuning.
* ``backbone.safetensors`` for torchvision:/timm: backbones: the backbone's weights under the library's own
  ``state_dict`` keys; ``encoder.json``'s ``backbone`` entry holds the Python that loads it with the library alone,
  and the normalisation to apply to [0, 1] images first.
* ``encoder.onnx`` with ``export.onnx``, checked with onnxruntime.
* the same encoder as a registered MLflow PyTorch model (see :mod:`pipeline.track`).

Every file is written atomically (a local one under a temporary name, then renamed), then loaded back and checked
to embed like the trained encoder before anything is registered.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from fsspec.registry import known_implementations
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from pipeline import storage
from pipeline.errors import SslpipeError
from pipeline.models import EncoderSpec, build_encoder
from pipeline.models.backbones import classifier_path, library_backbone, library_model, load_recipe

PT2, WEIGHTS, META, BACKBONE, ONNX = (
    "encoder.pt2",
    "encoder.safetensors",
    "encoder.json",
    "backbone.safetensors",
    "encoder.onnx",
)


def example_input(spec: EncoderSpec, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, spec.channels, spec.image_size, spec.image_size)


def export_encoder(
    encoder: nn.Module, spec: EncoderSpec, out: str | Path, metadata: dict, onnx: bool = False
) -> dict[str, str]:
    """Write the forms of ``encoder`` (``nn.Sequential``: normalisation, backbone, ...) to folder or URL prefix
    ``out``, ``encoder.onnx`` too with ``onnx``; returns their locations by kind (``pt2``, ``weights``, ``meta``,
    and ``backbone``, ``onnx`` where written)."""
    encoder = encoder.cpu().eval().to(memory_format=torch.contiguous_format)
    example = example_input(spec)
    with torch.no_grad():
        dim = encoder(example).shape[1]
    program = io.BytesIO()
    torch.export.save(
        torch.export.export(encoder, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)), program
    )
    meta = {
        "spec": spec.to_dict(),
        "embedding_dim": dim,
        "input": {
            "shape": ["B", spec.channels, spec.image_size, spec.image_size],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalization": "inside the encoder: (x - mean) / std",
        },
        **metadata,
    }
    files = {
        PT2: program.getvalue(),
        WEIGHTS: save_safetensors({k: v.contiguous() for k, v in encoder.state_dict().items()}, {"format": "pt"}),
    }
    if library_model(spec.arch) is not None:
        files[BACKBONE] = save_safetensors(
            {k: v.contiguous() for k, v in encoder[1].state_dict().items()}, {"format": "pt"}
        )
        meta["backbone"] = backbone_entry(spec, encoder[1](encoder[0](example)).shape[1])
    if onnx:
        files[ONNX] = onnx_bytes(encoder, example)
    files[META] = json.dumps(meta, indent=2, default=str).encode()
    for name, data in files.items():
        with storage.atomic_writer(out, name) as handle:
            handle.write(data)
    verify_export(encoder, spec, out, example, onnx)
    kinds = {PT2: "pt2", WEIGHTS: "weights", META: "meta", BACKBONE: "backbone", ONNX: "onnx"}
    return {kinds[name]: storage.join(out, name) for name in files}


def backbone_entry(spec: EncoderSpec, dim: int) -> dict:
    """What ``encoder.json`` says about ``backbone.safetensors``: the library, the model and its arguments, the
    Python that loads it, the classifier it lacks, and the input it expects."""
    library, name = library_model(spec.arch)
    return {
        "file": BACKBONE,
        "library": library,
        "model": name,
        "arguments": spec.backbone_args,
        "load": load_recipe(library, name, spec.backbone_args, spec.channels, spec.cifar_stem, BACKBONE),
        "classifier": classifier_path(library, name, spec.backbone_args),
        "features": f"(B, {dim}) pooled features once the classifier is torch.nn.Identity()",
        "input": {
            "shape": ["B", spec.channels, spec.image_size, spec.image_size],
            "range": [0.0, 1.0],
            "normalize": {"mean": list(spec.mean), "std": list(spec.std)},
            "note": "images in [0, 1], then (x - mean) / std per channel (the pretraining data's statistics)",
        },
        "ends_before": "the bottleneck of encoder.safetensors" if spec.bottleneck else None,
    }


def onnx_bytes(encoder: nn.Module, example: torch.Tensor) -> bytes:
    """``encoder`` as an ONNX model with a dynamic batch dimension (``torch.onnx`` with its dynamo exporter)."""
    try:
        program = torch.onnx.export(
            encoder, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False
        )
    except ImportError as exn:
        raise SslpipeError(f"export.onnx: {exn}; pip install 'sslpipe[onnx]' or set export.onnx=false") from None
    return program.model_proto.SerializeToString()


def exported_files(location: str | Path, names: tuple[str, ...] = (WEIGHTS, META)) -> dict[str, bytes]:
    """The content of export files ``names`` in ``location``, by name."""
    return {name: storage.read_bytes(storage.join(location, name)) for name in names}


def model_parts(location: str | Path) -> tuple[bytes, torch.Tensor, dict[str, bytes]]:
    """What the registered MLflow model of the export at ``location`` is made of: ``(the torch.export program's
    bytes, an example input, the files beside it: weights and encoder.json)``."""
    files = exported_files(location, (PT2, WEIGHTS, META))
    _, spec = encoder_from_files(files, str(location))
    return files.pop(PT2), example_input(spec), files


def verify_export(
    encoder: nn.Module, spec: EncoderSpec, out: str | Path, example: torch.Tensor, onnx: bool = False
) -> None:
    """Load every exported form from ``out`` (``encoder.onnx`` too with ``onnx``) and check it embeds ``example``
    as ``encoder`` (eval mode) does, ``backbone.safetensors`` as ``encoder``'s backbone does; raises naming the
    file that does not. Runs before anything is registered."""
    encoder.eval()
    pt2 = storage.join(out, PT2)
    with torch.no_grad():
        try:
            loaded = {pt2: torch.export.load(io.BytesIO(storage.read_bytes(pt2))).module()}
        except Exception as exn:
            raise SslpipeError(f"{pt2}: the export does not load ({exn})") from None
        loaded[storage.join(out, WEIGHTS)] = _load(str(out))[0].eval()
        checks = [(location, module(example), encoder(example), 1e-5) for location, module in loaded.items()]
        if onnx:
            location = storage.join(out, ONNX)
            output = torch.from_numpy(onnx_embed(storage.read_bytes(location), example.numpy()))
            checks.append((location, output, encoder(example), 1e-4))
        if (library := library_model(spec.arch)) is not None:
            location = storage.join(out, BACKBONE)
            backbone, _ = library_backbone(*library, spec.channels, spec.cifar_stem, spec.backbone_args)
            try:
                backbone.load_state_dict(load_safetensors(storage.read_bytes(location)))
            except (RuntimeError, OSError, ValueError) as exn:
                raise SslpipeError(f"{location}: the backbone does not load ({exn})") from None
            normalized = encoder[0](example)
            checks.append((location, backbone.eval()(normalized), encoder[1](normalized), 1e-5))
    for location, output, expected, atol in checks:
        if not torch.allclose(output, expected, rtol=1e-4, atol=atol):
            raise SslpipeError(f"{location}: the exported encoder does not reproduce the trained one")


def onnx_embed(model: bytes, images: np.ndarray) -> np.ndarray:
    """onnxruntime's output ``(B, D)`` for ``images`` (float32 ``(B, C, H, W)``) under ONNX ``model``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def load_encoder(location: str | Path) -> nn.Module:
    """A trainable ``nn.Module`` (train mode) from an export folder (or one holding it) or URL prefix, or an MLflow
    URI (``models:/``, ``runs:/``, ...) whose model carries ``encoder.json`` and ``encoder.safetensors``."""
    return load_export(location)[0]


def load_export(location: str | Path) -> tuple[nn.Module, EncoderSpec]:
    """``(encoder in train mode, its spec)`` from wherever :func:`load_encoder` reads."""
    encoder, meta = read_export(location)
    return encoder, EncoderSpec.from_dict(meta["spec"])


def read_export(location: str | Path) -> tuple[nn.Module, dict]:
    """``(encoder in train mode, the export's encoder.json)`` (spec, method, config, ``mlflow_run_id``, metrics) from
    wherever :func:`load_encoder` reads."""
    text = str(location)
    if storage.is_local(text):
        return _load(_holding_export(storage.local_path(text), text))
    if urlparse(text).scheme in known_implementations:
        return _load(text)
    from pipeline.track.tracker import downloaded  # MLflow only for its own URIs

    try:
        with downloaded(text) as folder:
            return _load(_holding_export(folder, text))
    except SslpipeError:
        raise
    except Exception as exn:
        raise SslpipeError(f"{text}: cannot download the model ({str(exn).splitlines()[0]})") from None


def _holding_export(folder: Path, location: str) -> str:
    """``folder``, or the first folder below it that holds an export."""
    if (folder / META).is_file():
        return str(folder)
    found = sorted(path.parent for path in folder.rglob(META))
    if not found:
        raise SslpipeError(f"{location}: no {META} found; pass an export folder or an sslpipe model URI")
    return str(found[0])


def _load(location: str) -> tuple[nn.Module, dict]:
    try:
        files = exported_files(location)
    except FileNotFoundError:
        raise SslpipeError(
            f"{location}: no {META} and {WEIGHTS} here; pass an export folder or an sslpipe model URI"
        ) from None
    except OSError as exn:
        raise SslpipeError(f"{location}: unreadable export ({exn}); export the encoder again") from None
    return encoder_from_files(files, location)[0], json.loads(files[META])


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
