"""cluster.yaml and the runtime env, checked offline with Ray's own cluster-config schema and parser."""

from __future__ import annotations

import copy

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config  # private: pyproject pins Ray
from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

from tests.processes import REPO


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema(cluster):
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    nodes = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and set(nodes) == {"head", "gpu_worker"}
    worker = nodes["gpu_worker"]
    assert worker["min_workers"] == 0 < worker["max_workers"] <= prepared["max_workers"]  # autoscaled
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance type


def test_cluster_yaml_installs_the_project_and_requires_the_token(cluster):
    assert any("pip install" in c and "sslpipe" in c for c in cluster["setup_commands"])
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert all("--dashboard-host=127.0.0.1" in c for c in ray_starts if "--head" in c)  # reached by SSH tunnel only


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update(max_wokers=3),  # a misspelt key
        lambda c: c["available_node_types"]["head"].pop("node_config"),
        lambda c: c.update(head_node_type="cpu_head"),
    ],
)
def test_schema_validation_catches_mistakes(cluster, break_it):
    break_it(cluster)
    with pytest.raises(Exception, match=r"max_wokers|node_config|head_node_type"):
        validate_config(prepare_config(cluster))


def test_runtime_env_parses_as_ray_job_submit_reads_it():
    env = parse_runtime_env_args(runtime_env=str(REPO / "jobs" / "runtime_env.yaml"), working_dir=".")
    assert env["working_dir"] == "." and "tests/" in env["excludes"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())
