import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import SslpipeError
from pipeline.export import example_input, export_encoder, load_encoder, verify_export
from pipeline.models import EncoderSpec, build_encoder

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
        verify_export(encoder, tmp_path, example)
    Path(paths["pt2"]).write_bytes(Path(paths["pt2"]).read_bytes()[:200])  # truncated
    with pytest.raises(SslpipeError, match=re.escape(f"{paths['pt2']}: the export does not load")):
        verify_export(encoder, tmp_path, example)


def test_pt2_loads_and_embeds_without_our_code(tmp_path):
    encoder = _trained_like_encoder()
    export_encoder(encoder, SPEC, tmp_path, {})
    x = torch.rand(5, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(encoder(x), tmp_path / "expected.pt")
    script = f"""
import sys, torch
module = torch.export.load({str(tmp_path / 'encoder.pt2')!r}).module()
x = torch.load({str(tmp_path / 'x.pt')!r})
out = module(x)
assert out.shape == (5, 32), out.shape
assert module(x[:1]).shape == (1, 32)  # the batch dimension is dynamic
torch.testing.assert_close(out, torch.load({str(tmp_path / 'expected.pt')!r}))
assert any(p.requires_grad for p in module.parameters())
assert not any(name == "pipeline" or name.startswith("pipeline.") for name in sys.modules), "imported sslpipe"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_an_export_to_a_url_loads_back_from_it():
    encoder = _trained_like_encoder()
    location = "memory://sslpipe-test/exports/run"
    paths = export_encoder(encoder, SPEC, location, {"method": "simclr"})
    assert paths == {"pt2": f"{location}/encoder.pt2", "weights": f"{location}/encoder.safetensors",
                     "meta": f"{location}/encoder.json"}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(location).eval()(x), encoder(x))
