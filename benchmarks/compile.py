"""What ``train.compile`` buys: training steps/s of SimCLR with and without ``torch.compile``, in one process,
after warm-up, and what compiling costs (the first steps' time).

    python -m benchmarks.compile [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import interleaved, medians, print_table, write_results
from pipeline.config import load_config
from pipeline.methods import build_method
from pipeline.models import EncoderSpec
from pipeline.optim import build_optimizer
from pipeline.train import train_step

SETUPS = {  # name: (overrides, spec, batch)
    "SimCLR, small CNN, 28 px (the shipped job)": (
        [],
        EncoderSpec("small_cnn", 1, 28, (0.29,), (0.35,), width=24, embed_dim=256),
        256,
    ),
    "SimCLR, ResNet-18, 64 px photos": (
        ["model.encoder=resnet18"],
        EncoderSpec("resnet18", 3, 64, (0.5,) * 3, (0.25,) * 3, cifar_stem=True),
        64,
    ),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows, results = [], {}
    for name, (overrides, spec, batch) in SETUPS.items():
        config = load_config(None, overrides)
        views = [torch.rand(batch, spec.channels, spec.image_size, spec.image_size) for _ in range(2)]
        runs = {}
        compile_s = None
        for compiled in (False, True):
            torch.manual_seed(0)
            method = build_method(config.method, spec, config.model).to(memory_format=torch.channels_last)
            optimizer = build_optimizer(method, config.optim, batch)
            model = torch.compile(method) if compiled else method
            started = time.perf_counter()
            train_step(model, optimizer, views, autocast=False).item()  # the first step compiles
            train_step(model, optimizer, views, autocast=False).item()
            if compiled:
                compile_s = time.perf_counter() - started

            def run(model=model, optimizer=optimizer, views=views) -> float:
                begin = time.perf_counter()
                for _ in range(args.steps):
                    loss = train_step(model, optimizer, views, autocast=False)
                loss.item()
                return args.steps * len(views[0]) / (time.perf_counter() - begin)

            runs["compiled" if compiled else "eager"] = run
        rates = medians(interleaved(runs, args.repeats, warmup=0))
        results[name] = {"images_per_s": rates, "compile_s": compile_s}
        rows.append(
            {
                "setup": name,
                "eager img/s": rates["eager"],
                "compiled img/s": rates["compiled"],
                "compiled / eager": rates["compiled"] / rates["eager"],
                "compile s": compile_s,
            }
        )
    print_table(rows)
    write_results("compile", {"steps": args.steps, "setups": results})


if __name__ == "__main__":
    main()
