"""What each Ray Train process imports: every run starts a controller and one process per worker, each of which
imports the modules its objects come from. torchvision (~2.5 s) and scikit-learn (~1.7 s) are needed only for
photos, library backbones and the driver's evaluation, so a small-image run must not pay them in every process."""

import subprocess
import sys

import pytest

# the worker function and the online kNN monitor (workers), the MLflow epoch logger (controller)
PROCESS_MODULES = ("pipeline.train.harness", "pipeline.evaluate.online", "pipeline.track.epoch_log")
SCRIPT = f"""
import sys

import pytest
for name in {PROCESS_MODULES!r}:
    __import__(name)
print(sorted({{name.split(".")[0] for name in sys.modules}} & {{"torchvision", "sklearn", "timm"}}))
"""


@pytest.mark.slow  # a process of its own
def test_ray_train_processes_import_no_library_they_do_not_use():
    run = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
