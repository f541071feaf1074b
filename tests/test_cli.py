import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SSLPIPE = Path(sys.executable).with_name("sslpipe")  # the console script installed beside this interpreter
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test runs `sslpipe` in a process of its own


def _sslpipe(*args):
    return subprocess.run([str(SSLPIPE), *map(str, args)], check=False, capture_output=True, text=True)


def test_shard_verify_preview(tmp_path):
    out = tmp_path / "shards"
    result = _sslpipe(
        "shard", "synthetic", "--out", out, "--num-train", 600, "--num-test", 100, "--samples-per-shard", 256
    )
    assert result.returncode == 0, result.stderr
    assert "train: 600 samples in 3 shards" in result.stdout
    assert "samples" in result.stderr or "img" in result.stderr  # tqdm progress bar
    verify = _sslpipe("verify", out)
    assert verify.returncode == 0 and "4 shards match manifest.json" in verify.stdout
    preview = _sslpipe("preview", out, "--preset", "light", "--out", tmp_path / "grid.png", "--count", 4)
    assert preview.returncode == 0, preview.stderr
    assert Image.open(tmp_path / "grid.png").size == (4 * 96 + 5 * 2, 3 * 96 + 4 * 2)


def test_errors_are_one_line_with_status_2(tmp_path):
    result = _sslpipe("shard", "imagenet", "--out", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sslpipe: error: unknown source 'imagenet': choose one of fashion-mnist, mnist, cifar10, folder:PATH, synthetic"
    ]
    result = _sslpipe("verify", tmp_path / "missing")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_tracking_server_fails_before_training(synthetic_shards, tmp_path):
    from tests.processes import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [
            str(SSLPIPE),
            "pretrain",
            REPO / "jobs" / "simclr_fashion_mnist.yaml",
            f"data.shards={synthetic_shards}",
            f"track.tracking_uri={uri}",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"sslpipe: error: MLflow tracking server {uri} does not answer")
    assert not (tmp_path / "ray_results").exists()  # Ray never started a run


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "shard" in result.stdout and "verify" in result.stdout


def test_validate_checks_a_job_against_its_shards_without_running_it(synthetic_shards):
    job = REPO / "jobs" / "byol_fashion_mnist.yaml"
    result = _sslpipe("validate", job, f"data.shards={synthetic_shards}")
    assert result.returncode == 0, result.stderr
    assert "method:\n  name: byol\n  ema_base: 0.99\noptim:" in result.stdout  # only BYOL's own options
    assert result.stdout.strip().endswith(f"valid (the config and {synthetic_shards}/manifest.json)")
    refused = _sslpipe("validate", job, f"data.shards={synthetic_shards}", "method.temperature=0.1")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"sslpipe: error: {job}: method.temperature does not apply to byol; byol takes ema_base"
    ]
