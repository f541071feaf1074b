"""Real processes started by tests, each stopped by PID: Ray nodes (``ray start --block``), a moto S3 server,
an MLflow tracking server; and the ranks of a gloo group."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray's variables (a local ``ray.init`` in the test process sets some), with the
    test's Python first on PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``command`` in its own session (a process group of its own), output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(processes: list[subprocess.Popen], grace_s: float = 5) -> None:
    """Terminate ``processes`` and every descendant they have now (found before any is signalled), then kill
    what outlives ``grace_s``."""
    tree = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(process.pid)
            tree += [parent, *parent.children(recursive=True)]
    _signal(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _running(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal(_running(tree), signal.SIGKILL)
    for process in processes:
        process.wait(timeout=10)


def _signal(procs: list[psutil.Process], signum: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signum)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those not yet exited (a zombie has: in a container nobody may reap an orphan)."""
    running = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
    return running


def wait_until(check, timeout_s: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} did not happen within {timeout_s} s\n{tail}")
        time.sleep(0.5)


@dataclass
class S3Server:
    """moto's S3 server on 127.0.0.1; ``env`` points boto3/s3fs clients at it."""

    url: str
    env: dict[str, str]

    def client(self):
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )


@contextlib.contextmanager
def s3_server(work: Path) -> Iterator[S3Server]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "moto.log"
    process = start([str(BIN / "python"), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], clean_env(), log)
    try:
        wait_until(lambda: _answers(url), 60, "moto's S3 server starting", process, log)
        yield S3Server(
            url,
            {
                "AWS_ENDPOINT_URL": url,
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
    finally:
        stop([process])


@dataclass
class MlflowServer:
    """``mlflow server`` on 127.0.0.1 keeping its runs and artifacts in ``work``: stopped and started again, it
    serves the same runs on the same port."""

    work: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.work / "mlflow-server.log"
        self.process = start(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.work / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.work / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            clean_env(),
            log,
        )
        wait_until(lambda: _answers(f"{self.url}/health"), 60, "the MLflow server starting", self.process, log)

    def stop(self) -> None:
        if self.process is not None:
            stop([self.process])
            self.process = None


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is serving
    except OSError:
        return False
    return True


@dataclass
class RayCluster:
    """A Ray head and worker nodes on 127.0.0.1 with token authentication (each node its own ``ray start``)."""

    dashboard: str  # the job server's address, for ``ray job submit --address``
    gcs: str
    token_path: Path
    env: dict[str, str]  # what a client of this cluster needs: the token, the node's environment
    processes: list[subprocess.Popen] = field(default_factory=list)

    def client_env(self, **extra: str) -> dict[str, str]:
        return self.env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)} | extra


@contextlib.contextmanager
def ray_cluster(
    work: Path, cpus_per_node: tuple[int, ...] = (1, 1), env: dict[str, str] | None = None
) -> Iterator[RayCluster]:
    """Start a head with ``cpus_per_node[0]`` CPUs and one worker node per further entry; every node runs with
    ``env`` (e.g. object-store credentials) and ``RAY_AUTH_MODE=token`` with a fresh token in ``work``."""
    token_path = work / "ray_token"
    token_path.write_text(secrets.token_hex(16))
    node_env = clean_env(**(env or {}), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    gcs_port, dashboard_port = free_port(), free_port()
    # a temp dir per node, as on separate machines (a node unpacking a job's working dir into a shared one would
    # pull it from under the driver); short, for Ray's socket paths have a length limit
    temp_dirs = [tempfile.mkdtemp(prefix="sslpipe-ray-", dir="/tmp") for _ in cpus_per_node]
    cluster = RayCluster(f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", token_path, node_env)
    try:
        head = [
            "--head",
            f"--port={gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
        ]
        _start_node(
            cluster, head, cpus_per_node[0], temp_dirs[0], work / "ray-head.log", lambda: _answers(cluster.dashboard)
        )
        for index, cpus in enumerate(cpus_per_node[1:], 1):
            joined = lambda count=index + 1: alive_nodes(cluster) == count  # noqa: E731
            _start_node(
                cluster, [f"--address={cluster.gcs}"], cpus, temp_dirs[index], work / f"ray-node-{index}.log", joined
            )
        # the job server answers before the head's agent takes jobs ("No available agent to submit job")
        wait_until(lambda: _submit(cluster, "true").returncode == 0, 120, "the job server accepting jobs")
        yield cluster
    finally:
        stop(cluster.processes)
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _start_node(
    cluster: RayCluster, role: list[str], cpus: int, temp_dir: str, log: Path, joined: Callable[[], bool]
) -> None:
    """``ray start --block`` a node of ``cluster`` (``role``: the head's options or the address to join) and wait
    until ``joined()``. ``ray start`` gives up when its raylet has not registered within a fixed 30 s, which a busy
    2-core machine sometimes needs: a node that gave up is started again, twice at most (its log keeps each try)."""
    for attempt in range(3):
        command = [
            str(BIN / "ray"),
            "start",
            "--block",
            *role,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            f"--temp-dir={temp_dir}",
            *_node_options(),
        ]
        process = start(command, cluster.env, log)
        cluster.processes.append(process)
        try:
            wait_until(joined, 120, f"Ray node {log.stem} joining", process, log)
            return
        except AssertionError:
            if process.poll() is None or attempt == 2:
                raise
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what the node had started (its raylet) goes with it


def _node_options() -> list[str]:
    """No usage stats, and free ports for the node's agents: nodes on one machine would otherwise all take the
    default agent port, and the head's job agent (which runs submitted jobs) can lose that race."""
    return [
        "--disable-usage-stats",
        *(
            f"--{name}={free_port()}"
            for name in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        ),
    ]


def _submit(cluster: RayCluster, *entrypoint: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", f"--address={cluster.dashboard}", "--", *entrypoint],
        env=cluster.client_env(),
        check=False,
        capture_output=True,
        text=True,
    )


def alive_nodes(cluster: RayCluster) -> int:
    """Nodes the cluster reports alive (asked as a client would, with the token)."""
    result = subprocess.run(
        [
            str(BIN / "ray"),
            "list",
            "nodes",
            f"--address={cluster.dashboard}",
            "--format=yaml",
            "--filter",
            "state=ALIVE",
        ],
        env=cluster.client_env(),
        check=False,
        capture_output=True,
        text=True,
    )
    return result.stdout.count("node_id:") if result.returncode == 0 else 0


def _gloo_rank(rank: int, world_size: int, port: int, worker: Callable[..., Any], args: tuple, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    results.put((rank, worker(*args)))
    dist.destroy_process_group()


def gloo_ranks(worker: Callable[..., Any], *args: Any, world_size: int = 2, timeout_s: float = 300) -> list[Any]:
    """What ``worker(*args)`` returns on each rank of a gloo group of ``world_size`` spawned processes, in rank
    order (``worker``: a module-level function; its result pickled by value, e.g. numpy arrays, not tensors)."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results, port = context.Queue(), free_port()
    processes = [
        context.Process(target=_gloo_rank, args=(rank, world_size, port, worker, args, results))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outputs = sorted((results.get(timeout=timeout_s) for _ in processes), key=lambda output: output[0])
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0, f"a rank exited with {process.exitcode}"
    return [result for _, result in outputs]
