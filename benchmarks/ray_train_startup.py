"""What a Ray Train run costs before and after its training loop: a no-op 2-worker ``TorchTrainer.fit`` on a warm
local Ray, split into the time until the loop starts, DDP's first construction (``prepare_model``) and the time from
the loop's end until ``fit`` returns. The floor under every Ray Train run of the pipeline and of the test suite.

    python -m benchmarks.ray_train_startup [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import local_ray, print_table, write_results


def _loop(config: dict) -> None:
    """Wall-clock times (the loop's start, after DDP's construction, its end) written by rank 0."""
    import time

    import ray.train
    import torch
    from ray.train.torch import prepare_model

    started = time.time()
    prepare_model(torch.nn.Linear(2, 2))
    prepared = time.time()
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps([started, prepared, time.time()]))


def one_fit(workers: int) -> dict[str, float]:
    """Seconds of one no-op fit: ``until_loop``, ``ddp``, ``after_loop`` and ``total``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder, "times.json")
        trainer = TorchTrainer(
            _loop,
            train_loop_config={"out": str(out)},
            scaling_config=ScalingConfig(num_workers=workers),
            run_config=RunConfig(name="noop", storage_path=str(Path(folder, "ray_results"))),
        )
        begun = time.time()
        trainer.fit()
        ended = time.time()
        started, prepared, finished = json.loads(out.read_text())
    return {
        "until_loop": started - begun,
        "ddp": prepared - started,
        "after_loop": ended - finished,
        "total": ended - begun,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with local_ray(cpus=2 * args.workers):
        fits = [one_fit(args.workers) for _ in range(args.repeats)]
    median = {key: statistics.median(fit[key] for fit in fits) for key in fits[0]}
    print_table([{"fit": i, **{k: round(v, 1) for k, v in fit.items()}} for i, fit in enumerate(fits)])
    write_results(
        "ray_train_startup",
        {
            "command": f"python -m benchmarks.ray_train_startup --repeats {args.repeats} --workers {args.workers}",
            "workers": args.workers,
            "median_s": median,
            "fits_s": fits,
        },
    )


if __name__ == "__main__":
    main()
