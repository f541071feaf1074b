"""The command line: each command through ``main`` in this process (its output, exit status 2 and one line for bad
input), and the installed console script and ``python -m pipeline`` as a user starts them."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cli import main

SSLPIPE = Path(sys.executable).with_name("sslpipe")  # the console script installed beside this interpreter
REPO = Path(__file__).resolve().parents[1]


def _sslpipe(capsys, *args) -> tuple[int, str, str]:
    """``sslpipe ARGS`` in this process: ``(exit status, stdout, stderr)``."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_shard_verify_preview(tmp_path, capsys):
    out = tmp_path / "shards"
    code, printed, progress = _sslpipe(
        capsys, "shard", "synthetic", "--out", out, "--num-train", 600, "--num-test", 100, "--samples-per-shard", 256
    )
    assert code == 0, progress
    assert "train: 600 samples in 3 shards" in printed
    assert "samples" in progress or "img" in progress  # tqdm progress bar
    code, printed, _ = _sslpipe(capsys, "verify", out)
    assert code == 0 and "4 shards match manifest.json" in printed
    code, _, err = _sslpipe(capsys, "preview", out, "--preset", "light", "--out", tmp_path / "grid.png", "--count", 4)
    assert code == 0, err
    assert Image.open(tmp_path / "grid.png").size == (4 * 96 + 5 * 2, 3 * 96 + 4 * 2)


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    code, _, err = _sslpipe(capsys, "shard", "imagenet", "--out", tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [
        "sslpipe: error: unknown source 'imagenet': choose one of fashion-mnist, mnist, cifar10, folder:PATH, synthetic"
    ]
    code, _, err = _sslpipe(capsys, "verify", tmp_path / "missing")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_an_unreachable_tracking_server_fails_before_training(synthetic_shards, tmp_path, capsys, monkeypatch):
    from tests.processes import free_port

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job = REPO / "jobs" / "simclr_fashion_mnist.yaml"
    code, _, err = _sslpipe(capsys, "pretrain", job, f"data.shards={synthetic_shards}", f"track.tracking_uri={uri}")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"sslpipe: error: MLflow tracking server {uri} does not answer")
    assert not (tmp_path / "ray_results").exists()  # Ray never started a run


@pytest.mark.slow  # processes of their own
def test_the_console_script_and_python_dash_m_run_the_command_line(tmp_path):
    result = subprocess.run([str(SSLPIPE), "verify", tmp_path / "missing"], check=False, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("sslpipe: error: ")
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "shard" in result.stdout and "verify" in result.stdout


def test_validate_checks_a_job_against_its_shards_without_running_it(synthetic_shards, capsys):
    job = REPO / "jobs" / "byol_fashion_mnist.yaml"
    code, printed, err = _sslpipe(capsys, "validate", job, f"data.shards={synthetic_shards}")
    assert code == 0, err
    assert "method:\n  name: byol\n  ema_base: 0.99\noptim:" in printed  # only BYOL's own options
    assert printed.strip().endswith(f"valid (the config and {synthetic_shards}/manifest.json)")
    code, _, err = _sslpipe(capsys, "validate", job, f"data.shards={synthetic_shards}", "method.temperature=0.1")
    assert code == 2 and err.strip().splitlines() == [
        f"sslpipe: error: {job}: method.temperature does not apply to byol; byol takes ema_base"
    ]
