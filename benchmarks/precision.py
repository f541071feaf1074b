"""bf16 autocast against float32 on this machine's CPUs (``train.amp``): training throughput through Ray Train's
2-worker layout (2 workers of 1 CPU, as the shipped jobs run), for the Fashion-MNIST SimCLR job's model and for the
photo job's ResNet-18 at 112 px.

    python -m benchmarks.precision [--repeats 3] [--steps 20] [--photo-steps 6] [--shards data/fashion-mnist]

Each run is ``pipeline.train.fit`` for 2 epochs of at most ``--steps`` batches per rank
(``train.max_steps_per_epoch``); epoch 0 is warm-up and the rate is what the workers report for epoch 1 (all
ranks' images over the epoch loop's time, start-up excluded). The precisions alternate (float32, bf16, float32,
...). The photos are crops of Debian's wallpapers (``benchmarks.photo_folder``), sharded unlabeled into a temporary
folder. Prints the table; writes ``benchmarks/results/precision.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from functools import partial
from pathlib import Path

from benchmarks.common import command_line, interleaved, local_ray, medians, print_table, write_results
from benchmarks.photo_folder import make_photo_folder
from pipeline.config import load_config, with_values
from pipeline.config.job_config import JobConfig
from pipeline.data.photo_shards import write_photo_shards
from pipeline.train import fit
from pipeline.train.amp import precision_name

JOBS = Path(__file__).resolve().parent.parent / "jobs"
PRECISIONS = {precision_name(False): False, precision_name(True): True}


def rate(config: JobConfig, amp: bool, steps: int) -> float:
    """images/s of epoch 1 of a 2-epoch ``fit`` of ``config`` at ``steps`` batches per rank, ``train.amp=amp``."""
    values = {"train.amp": amp, "train.epochs": 2, "train.max_steps_per_epoch": steps}
    state = fit(with_values(config, values, "precision"), f"precision-{uuid.uuid4().hex[:8]}")
    return state["metrics"]["images_per_s"]


def photo_shards(work: Path) -> Path:
    """Unlabeled shards of 8 photos per photograph (256-512 px crops of 23 photographs)."""
    folder = make_photo_folder(work / "folder", 8, 0, min_side=256, max_side=512)
    files = sorted((folder / "train").rglob("*.jpg"))
    shards = work / "shards"
    write_photo_shards(
        {"train": [(str(f), -1) for f in files]}, [], shards, source={"name": "bench"}, samples_per_shard=32
    )
    return shards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="data/fashion-mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="batches per rank and epoch, Fashion-MNIST job")
    parser.add_argument("--photo-steps", type=int, default=6, help="batches per rank and epoch, photo job")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory, local_ray(2):
        work = Path(directory)
        storage = [f"train.storage_path={work / 'ray_results'}", "train.num_workers=2", "train.cpus_per_worker=1"]
        models = {
            "SimCLR job's small CNN, 28 px, 256 per rank": (
                load_config(
                    JOBS / "simclr_fashion_mnist.yaml", [f"data.shards={Path(args.shards).resolve()}", *storage]
                ),
                args.steps,
            ),
            "ResNet-18 (photo job), 112 px, 32 per rank": (
                load_config(
                    JOBS / "simclr_photos.yaml", [f"data.shards={photo_shards(work)}", "eval.shards=null", *storage]
                ),
                args.photo_steps,
            ),
        }
        rows, runs = [], {}
        for model, (config, steps) in models.items():
            variants = {name: partial(rate, config, amp, steps) for name, amp in PRECISIONS.items()}
            runs[model] = interleaved(variants, args.repeats, warmup=0)
            median = medians(runs[model])
            rows += [
                {
                    "model": model,
                    "precision": name,
                    "images/s": value,
                    "vs float32": value / median[precision_name(False)],
                }
                for name, value in median.items()
            ]
    print_table(rows)
    write_results(
        "precision",
        {
            "command": command_line("benchmarks.precision", argv),
            "rows": rows,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
