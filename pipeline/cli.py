"""The ``sslpipe`` command: parses arguments and dispatches to the commands (:mod:`pipeline.commands`), handing
``tune`` and ``anomaly`` the pretraining job their trials run; errors print as one line (exit status 2)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import SslpipeError


def _shard(args: argparse.Namespace) -> None:
    from pipeline.commands.shard import shard, show

    show(shard(args.source, args.out, vars(args)), args.out)


def _verify(args: argparse.Namespace) -> None:
    from pipeline.commands.shard import verify

    print(f"{args.location}: {verify(args.location)} shards match manifest.json")


def _preview(args: argparse.Namespace) -> None:
    from pipeline.commands.shard import preview

    path = preview(args.location, args.split, args.count, args.views, args.seed, args.image_size, args.preset, args.out)
    print(f"wrote {path}")


def _validate(args: argparse.Namespace) -> None:
    from pipeline.config import dump_config, load_config, read_yaml, validate
    from pipeline.data import read_manifest
    from pipeline.search.space import load_search, validate_search

    if "search" in read_yaml(args.config):
        config, search = load_search(args.config, args.overrides)
    else:
        config, search = load_config(args.config, args.overrides), None
    manifest = None if args.no_data else read_manifest(config.data.shards)
    validate(config, manifest)
    if search is not None:
        validate_search(config, search, manifest)
    print(dump_config(config), end="")
    checked = "the config" if args.no_data else f"the config and {config.data.shards}/manifest.json"
    trials = f", and every value of its {len(search.keys())} searched keys" if search else ""
    print(f"# {args.config}: valid ({checked}{trials})")


def _options(args: argparse.Namespace) -> None:
    from pipeline.config import reference

    print(reference())


def _pretrain(args: argparse.Namespace) -> None:
    from pipeline.commands.pretrain import pretrain, show
    from pipeline.config import load_config

    show(pretrain(load_config(args.config, args.overrides)))


def _tune(args: argparse.Namespace) -> None:
    from pipeline.commands.pretrain import pretrain
    from pipeline.commands.tune import show, tune
    from pipeline.search.space import load_search

    show(tune(*load_search(args.search, args.overrides), job=pretrain))


def _anomaly(args: argparse.Namespace) -> None:
    from pipeline.commands.anomaly import anomaly, show
    from pipeline.commands.pretrain import pretrain
    from pipeline.config import load_config

    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    show(anomaly(load_config(args.config, args.overrides), args.protocol, classes, args.name, job=pretrain))


def _embed(args: argparse.Namespace) -> None:
    from pipeline.commands.embed import embed, show

    show(
        embed(
            args.model,
            args.data,
            args.out,
            split=args.split,
            workers=args.workers,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            skip_bad_samples=args.skip_bad_samples,
        )
    )


def _finetune(args: argparse.Namespace) -> None:
    from pipeline.commands.finetune import finetune, finetune_config, show
    from pipeline.export import read_export

    encoder, meta = read_export(args.model)
    fractions = [f"finetune.fractions=[{args.fractions}]"] if args.fractions else []
    config = finetune_config(
        meta.get("config") or {},
        [*fractions, *args.overrides],
        args.shards,
        f"{args.model} (encoder.json) with the overrides",
    )
    show(finetune(args.model, encoder, meta, config))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslpipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sslpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(commands)
    _job_commands(commands)
    _encoder_commands(commands)
    return parser


def _data_commands(commands: Any) -> None:
    """``shard``, ``verify``, ``preview``."""
    shard = commands.add_parser("shard", help="write a data set as WebDataset tar shards + manifest.json")
    shard.add_argument(
        "source",
        help="fashion-mnist, mnist, cifar10, synthetic, folder:PATH (photos: one subfolder "
        "per class, or a flat folder of unlabeled photos) or list:FILE (a path or URL per line, "
        "optionally TAB and a class)",
    )
    shard.add_argument("--out", required=True, help="output folder (or object-store URL prefix)")
    shard.add_argument("--root", type=Path, help="where the source's files are (searched first)")
    shard.add_argument("--samples-per-shard", type=int, help="default 4096 (arrays), 1000 (photos)")
    shard.add_argument("--encoding", choices=("png", "npy"), default="png")
    shard.add_argument(
        "--images-per-member", type=int, help="images per tar member (default: 256 up to 64x64x3, else 1)"
    )
    shard.add_argument("--seed", type=int, default=0, help="seed of the sample order (and of synthetic data)")
    shard.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    shard.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing data set")
    shard.add_argument(
        "--image-size",
        type=int,
        help="folder: resize + center-crop to N px arrays instead of keeping photos; synthetic: side",
    )
    shard.add_argument("--max-side", type=int, default=512, help="photos: longer sides are resized to this once")
    shard.add_argument("--lossless", action="store_true", help="photos: store converted images as PNG, not JPEG")
    shard.add_argument("--unlabeled", action="store_true", help="photos: ignore subfolders as classes")
    shard.add_argument("--workers", type=int, default=1, help="photos: processes writing shards in parallel")
    shard.add_argument(
        "--ray",
        action="store_true",
        help="photos: write each shard as a Ray task on the cluster ($RAY_ADDRESS or a local Ray)",
    )
    shard.add_argument("--channels", type=int, choices=(1, 3), help="folder (default 3) and synthetic (default 1)")
    shard.add_argument("--num-train", type=int, default=2048, help="synthetic: train samples")
    shard.add_argument("--num-test", type=int, default=512, help="synthetic: test samples")
    shard.add_argument("--num-classes", type=int, default=10, help="synthetic: classes")
    shard.add_argument("--test-fraction", type=float, default=0.1, help="folder without train/test: held-out share")
    shard.set_defaults(run=_shard)

    verify = commands.add_parser("verify", help="check every shard's sha256 and size against manifest.json")
    verify.add_argument("location", help="shard folder or URL prefix")
    verify.set_defaults(run=_verify)

    preview = commands.add_parser("preview", help="save a PNG grid of images and their augmented views")
    preview.add_argument("location", help="shard folder or URL prefix")
    preview.add_argument("--preset", default="simclr", help="simclr, byol or light")
    preview.add_argument("--out", type=Path, default=Path("preview.png"))
    preview.add_argument("--split", default="train")
    preview.add_argument("--count", type=int, default=8, help="images (columns)")
    preview.add_argument("--views", type=int, default=2, help="views per image (rows)")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--image-size", type=int, default=224, help="photos: side of the crops")
    preview.set_defaults(run=_preview)


def _job_commands(commands: Any) -> None:
    """``validate``, ``options``, ``pretrain``, ``tune``, ``anomaly``."""
    validate = commands.add_parser(
        "validate",
        help="check a job or search file (and its shards' manifest) without running it; print the resolved job",
    )
    validate.add_argument("config", help="job or search YAML")
    validate.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. method.temperature=0.1")
    validate.add_argument("--no-data", action="store_true", help="check the config alone, not against its shards")
    validate.set_defaults(run=_validate)
    options = commands.add_parser("options", help="every job key: type, allowed values, default (Markdown)")
    options.set_defaults(run=_options)
    pretrain = commands.add_parser("pretrain", help="pretrain, evaluate, track and export an encoder (Ray Train)")
    pretrain.add_argument("config", help="job YAML, e.g. jobs/simclr_fashion_mnist.yaml")
    pretrain.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.epochs=1")
    pretrain.set_defaults(run=_pretrain)
    tune = commands.add_parser("tune", help="hyperparameter search with Ray Tune; each trial a pretraining run")
    tune.add_argument("search", help="search YAML, e.g. jobs/search_simclr_fashion_mnist.yaml")
    tune.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. search.num_samples=2")
    tune.set_defaults(run=_tune)
    anomaly = commands.add_parser(
        "anomaly",
        help="anomaly detection per class (one-class or leave-one-out): one "
        "pretraining run per class, AUROC of every score beside PCA's",
    )
    anomaly.add_argument("config", help="job YAML, e.g. jobs/simclr_anomaly_fashion_mnist.yaml")
    anomaly.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.epochs=2")
    anomaly.add_argument(
        "--protocol",
        required=True,
        choices=("one-class", "leave-one-out"),
        help="one-class: pretrain on one class, the others are anomalies; leave-one-out: pretrain "
        "on all but one class, which is the anomaly",
    )
    anomaly.add_argument("--classes", help="comma-separated labels (default: every class)")
    anomaly.add_argument("--name", help="rerunning with the same name resumes (default: protocol, method and time)")
    anomaly.set_defaults(run=_anomaly, overrides_anywhere=True)


def _encoder_commands(commands: Any) -> None:
    """What uses an exported encoder: ``embed``, ``finetune``."""
    embed = commands.add_parser("embed", help="embeddings of a data set by an exported encoder (Parquet + a 2-D map)")
    embed.add_argument(
        "model", help="export folder (exports/RUN), URL prefix, or MLflow URI (models:/sslpipe-encoder/1)"
    )
    embed.add_argument(
        "data",
        help="shard folder or URL prefix with manifest.json, or a folder of images "
        "(folder:PATH or a plain directory; one subfolder per class, or none)",
    )
    embed.add_argument("--out", required=True, help="output folder: embeddings.parquet, map.png, embed.json")
    embed.add_argument("--split", help="only this split (default: every split)")
    embed.add_argument(
        "--workers", type=int, help="Ray actors (default: one per GPU, else 2); 0 or 1: this process, no Ray"
    )
    embed.add_argument("--batch-size", type=int, default=256, help="images per encoder call")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing embeddings.parquet")
    embed.add_argument(
        "--skip-bad-samples",
        action="store_true",
        help="skip and count images that cannot be decoded instead of failing",
    )
    embed.set_defaults(run=_embed)
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune an exported encoder + linear head on 1%% and 10%% "
        "of the labels, beside the same from random initialisation (Ray Train)",
    )
    finetune.add_argument(
        "model", help="export folder (exports/RUN), URL prefix, or MLflow URI (models:/sslpipe-encoder/1)"
    )
    finetune.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. finetune.epochs=[20,10]")
    finetune.add_argument(
        "--shards",
        help="labeled shards with train and test splits (default: the pretraining job's eval.shards, else data.shards)",
    )
    finetune.add_argument("--fractions", help="labeled fractions of train, comma-separated (default 0.01,0.1)")
    finetune.set_defaults(run=_finetune, overrides_anywhere=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "overrides_anywhere", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # argparse gives overrides after an option no positional slot: they are overrides all the same
        args.overrides = [*args.overrides, *extra]
    try:
        args.run(args)
    except SslpipeError as exn:
        print(f"sslpipe: error: {exn}", file=sys.stderr)
        return 2
    return 0
