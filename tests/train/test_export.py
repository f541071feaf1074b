import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import SslpipeError
from pipeline.export import example_input, export_encoder, load_encoder, verify_export
from pipeline.models import EncoderSpec, build_encoder
from tests.helpers import features_with_the_library_alone

SPEC = EncoderSpec("small_cnn", 1, 28, (0.3,), (0.35,), width=8, embed_dim=32)


def _trained_like_encoder():
    torch.manual_seed(0)
    encoder, _ = build_encoder(SPEC)
    encoder.train()
    encoder(torch.rand(16, 1, 28, 28))  # move BatchNorm running stats away from their defaults
    return encoder.eval()


def test_export_files_and_load_encoder_round_trip(tmp_path):
    encoder = _trained_like_encoder()
    paths = export_encoder(encoder, SPEC, tmp_path, {"method": "simclr", "manifest_sha256": "abc"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "encoder.pt2", "encoder.safetensors"]
    meta = json.loads(Path(paths["meta"]).read_text())
    assert meta["embedding_dim"] == 32 and meta["spec"]["arch"] == "small_cnn" and meta["method"] == "simclr"
    assert meta["input"]["shape"] == ["B", 1, 28, 28]
    loaded = load_encoder(tmp_path)
    assert loaded.training  # ready for fine-tuning
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), encoder(x))


def test_a_damaged_export_is_caught_before_registration(tmp_path):
    encoder = _trained_like_encoder()
    paths = export_encoder(encoder, SPEC, tmp_path, {})  # verifies what it wrote
    example = example_input(SPEC)
    weights = {k: v.clone() for k, v in encoder.state_dict().items()}
    weights["1.0.weight"] += 0.5  # well-formed file, wrong numbers
    save_file(weights, paths["weights"])
    with pytest.raises(SslpipeError, match=re.escape(f"{paths['weights']}: the exported encoder does not reproduce")):
        verify_export(encoder, SPEC, tmp_path, example)
    Path(paths["pt2"]).write_bytes(Path(paths["pt2"]).read_bytes()[:200])  # truncated
    with pytest.raises(SslpipeError, match=re.escape(f"{paths['pt2']}: the export does not load")):
        verify_export(encoder, SPEC, tmp_path, example)


@pytest.mark.slow  # a process of its own
def test_pt2_loads_and_embeds_without_our_code(tmp_path):
    encoder = _trained_like_encoder()
    export_encoder(encoder, SPEC, tmp_path, {})
    x = torch.rand(5, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(encoder(x), tmp_path / "expected.pt")
    script = f"""
import sys, torch
module = torch.export.load({str(tmp_path / "encoder.pt2")!r}).module()
x = torch.load({str(tmp_path / "x.pt")!r})
out = module(x)
assert out.shape == (5, 32), out.shape
assert module(x[:1]).shape == (1, 32)  # the batch dimension is dynamic
torch.testing.assert_close(out, torch.load({str(tmp_path / "expected.pt")!r}))
assert any(p.requires_grad for p in module.parameters())
assert not any(name == "pipeline" or name.startswith("pipeline.") for name in sys.modules), "imported sslpipe"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_an_export_to_a_url_loads_back_from_it():
    encoder = _trained_like_encoder()
    location = "memory://sslpipe-test/exports/run"
    paths = export_encoder(encoder, SPEC, location, {"method": "simclr"})
    assert paths == {
        "pt2": f"{location}/encoder.pt2",
        "weights": f"{location}/encoder.safetensors",
        "meta": f"{location}/encoder.json",
    }
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(location).eval()(x), encoder(x))


def _library_export(tmp_path, encoder_name, manifest_location, size=None, **model):
    from pipeline.data import read_manifest
    from pipeline.models import ModelConfig, encoder_spec

    spec = encoder_spec(ModelConfig(encoder=encoder_name, **model), read_manifest(manifest_location), size)
    torch.manual_seed(0)
    encoder, _ = build_encoder(spec)
    encoder.train()(torch.rand(8, spec.channels, spec.image_size, spec.image_size))  # BN statistics move
    folder = tmp_path / encoder_name.replace(":", "-")
    return folder, export_encoder(encoder.eval(), spec, folder, {}), encoder, spec


@pytest.mark.slow  # a process of its own
def test_backbone_exports_load_in_their_own_library_alone(tmp_path, synthetic_shards, labeled_photo_shards):
    """backbone.safetensors + the recipe in encoder.json give the same features with torchvision or timm alone."""
    exports = [
        _library_export(tmp_path, "torchvision:resnet18", synthetic_shards),  # 1 channel, small stem
        _library_export(tmp_path, "torchvision:mobilenet_v3_small", labeled_photo_shards, 64),
        _library_export(tmp_path, "timm:vit_tiny_patch16_224", synthetic_shards, backbone_args={"patch_size": 7}),
        _library_export(tmp_path, "timm:resnet18", labeled_photo_shards, 32),
    ]
    meta = json.loads(Path(exports[0][1]["meta"]).read_text())["backbone"]
    assert meta["library"] == "torchvision" and meta["classifier"] == "fc" and "conv1" in meta["load"]
    inputs = [torch.rand(3, spec.channels, spec.image_size, spec.image_size) for _, _, _, spec in exports]
    alone = features_with_the_library_alone(*((folder, x) for (folder, *_), x in zip(exports, inputs, strict=True)))
    for (_, _, encoder, _), x, features in zip(exports, inputs, alone, strict=True):
        with torch.no_grad():
            torch.testing.assert_close(features, encoder[1](encoder[0](x)))


def test_a_damaged_backbone_file_is_caught(tmp_path, synthetic_shards):
    folder, paths, _, _ = _library_export(tmp_path, "timm:resnet18", synthetic_shards)
    assert sorted(p.name for p in folder.iterdir()) == [
        "backbone.safetensors",
        "encoder.json",
        "encoder.pt2",
        "encoder.safetensors",
    ]
    weights = load_file(paths["backbone"])
    weights["conv1.weight"] += 0.5
    save_file(weights, paths["backbone"])
    from pipeline.export import encoder_from_files, exported_files

    encoder, spec = encoder_from_files(exported_files(folder), str(folder))
    with pytest.raises(SslpipeError, match=re.escape(f"{paths['backbone']}: the exported encoder does not")):
        verify_export(encoder.eval(), spec, folder, example_input(spec))


@pytest.mark.slow  # the dynamo exporter and onnxruntime: about 6 s
def test_onnx_export_matches_pytorch_under_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    encoder = _trained_like_encoder()
    paths = export_encoder(encoder, SPEC, tmp_path, {}, onnx=True)  # verified with onnxruntime on writing
    session = onnxruntime.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
    x = torch.rand(6, 1, 28, 28)  # another batch size than the export's example
    with torch.no_grad():
        expected = encoder(x).numpy()
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == (6, 32)
    torch.testing.assert_close(torch.from_numpy(out), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)
