"""``sslpipe embed``: the embeddings of a data set by an exported encoder, computed in pieces by Ray actors (one
per GPU, or CPU workers) or in this process, and written in data order.

DATA is a shard location (folder or URL with ``manifest.json``) or a folder of images (``folder:PATH`` or a plain
directory, labeled by subfolder or not at all, with optional ``train``/``test`` subfolders as ``sslpipe shard``
reads it). Images become the encoder's input as evaluation makes it: photos center-cropped at the export's
``spec.image_size`` (short side scaled to ``size / 0.875``), arrays as they are (their central square resized
when their size differs), channels matched to ``spec.channels``.

Writes ``DIR/embeddings.parquet`` (``id``, ``split``, ``label``, ``class_name``, ``embedding``
``fixed_size_list<float32>[D]``), ``DIR/map.png`` (a 2-D map: UMAP where ``umap-learn`` is installed, else PCA,
coloured by class) and ``DIR/embed.json``, each atomically. Ids are the shards' sample keys (``{split}-{index:08d}``,
also for the images of chunked shards, whose members hold many) or the file paths relative to the folder (whose
``split`` is null without ``train``/``test`` subfolders); ``label`` and ``class_name`` are null where the data has no
classes. Rows come in data order (splits, shards and samples as the manifest lists them; files as listed), whatever
the number of workers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from tqdm import tqdm

from pipeline import storage
from pipeline.data.reading import Skipped
from pipeline.embedding.embedder import Embedded, embedded
from pipeline.embedding.pieces import Plan, plan_data
from pipeline.errors import ConfigError, SslpipeError
from pipeline.evaluate.plots import latent_scatter_png, projection_of
from pipeline.export import load_export

PARQUET, MAP, SUMMARY = "embeddings.parquet", "map.png", "embed.json"
MAP_POINTS = 20_000  # the map shows a seeded sample of at most this many rows
ROW_GROUP = 16_384


@dataclass(frozen=True)
class Summary:
    out: str
    count: int
    dim: int
    skipped: int
    seconds: float
    workers: int
    device: str
    projection: str


def embed(
    model: str,
    data: str,
    out: str,
    *,
    split: str | None = None,
    workers: int | None = None,
    batch_size: int = 256,
    piece_size: int = 1024,
    overwrite: bool = False,
    skip_bad_samples: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> Summary:
    """Embed ``data`` with ``model`` into ``out`` (see the module docstring). ``workers``: ``0`` or ``1`` run in
    this process without Ray; more, Ray actors (one GPU each where the cluster has GPUs); ``None``, one per GPU,
    else 2."""
    began = time.monotonic()
    if storage.names(out, PARQUET) and not overwrite:
        raise SslpipeError(f"{storage.join(out, PARQUET)} exists; pass --overwrite to replace it")
    if batch_size < 1 or (workers is not None and workers < 0):
        raise ConfigError(f"batch_size ({batch_size}) must be >= 1 and workers ({workers}) >= 0")
    encoder, spec = load_export(model)
    encoder.eval()
    plan = plan_data(data, split, piece_size)
    bar = tqdm(total=plan.total, unit="img", desc="embed", disable=not progress)
    with (
        bar,
        embedded(plan.pieces, encoder, spec, workers, batch_size, skip_bad_samples, bar) as (results, used, device),
    ):
        count, dim, sample, skipped = _write_parquet(out, data, plan, results)
    projection = _write_map(out, *sample, plan.class_names, f"{model} on {data}: {count} images")
    if skipped:
        report(f"skipped {sum(s.count for s in skipped)} bad samples (first: {skipped[0].reason})")
    seconds = time.monotonic() - began
    summary = Summary(str(out), count, dim, sum(s.count for s in skipped), seconds, used, device, projection)
    info = {
        "model": str(model),
        "data": str(data),
        "split": split,
        "count": count,
        "dim": dim,
        "seconds": round(seconds, 3),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "workers": used,
        "device": device,
        "map": projection,
        "image_size": spec.image_size,
        "channels": spec.channels,
        "skipped": summary.skipped,
        "skipped_first": [s.reason for s in skipped[:10]],
    }
    with storage.atomic_writer(out, SUMMARY) as handle:
        handle.write(json.dumps(info, indent=2).encode())
    return summary


def _write_parquet(
    out: str, data: str, plan: Plan, results: Iterator[Embedded]
) -> tuple[int, int, tuple[np.ndarray, np.ndarray], list[Skipped]]:
    """Write the results in order, a row group per ``ROW_GROUP`` rows; returns ``(rows, D, (a seeded sample of
    embeddings and their labels for the map), skipped)``. No file appears when no image could be embedded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fraction = min(1.0, MAP_POINTS / max(1, plan.total))
    count, dim, writer, pending, sampled, skipped = 0, 0, None, [], [], []
    with storage.atomic_writer(out, PARQUET) as handle:
        try:
            for index, (piece, result) in enumerate(zip(plan.pieces, results, strict=True)):
                skipped += result.skipped
                if not result.ids:
                    continue
                dim = result.embeddings.shape[1]
                if writer is None:
                    writer = pq.ParquetWriter(handle, _schema(pa, dim))
                pending.append(_table(pa, piece.split, result, plan.class_names, dim))
                count += len(result.ids)
                if sum(len(t) for t in pending) >= ROW_GROUP:
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
                chosen = np.random.default_rng([0, index]).random(len(result.ids)) < fraction
                sampled.append((result.embeddings[chosen], result.labels[chosen]))
            if writer is None:
                reason = skipped[0].reason if skipped else "none found"
                raise SslpipeError(f"{data}: no image could be embedded ({reason})")
            if pending:
                writer.write_table(pa.concat_tables(pending))
        finally:  # (the file is discarded when this raised)
            if writer is not None:
                writer.close()
    embeddings, labels = (np.concatenate(column) for column in zip(*sampled, strict=True))
    return count, dim, (embeddings, labels), skipped


def _schema(pa, dim: int):
    return pa.schema(
        [
            ("id", pa.string()),
            ("split", pa.string()),
            ("label", pa.int64()),
            ("class_name", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


def _table(pa, split: str | None, result: Embedded, class_names: tuple[str, ...], dim: int):
    labels = result.labels
    names = [class_names[i] if 0 <= i < len(class_names) else None for i in labels.tolist()]
    values = pa.array(result.embeddings.astype(np.float32, copy=False).reshape(-1), pa.float32())
    return pa.Table.from_arrays(
        [
            pa.array(result.ids, pa.string()),
            pa.array([split] * len(labels), pa.string()),
            pa.array(labels, pa.int64(), mask=labels < 0),
            pa.array(names, pa.string()),
            pa.FixedSizeListArray.from_arrays(values, dim),
        ],
        schema=_schema(pa, dim),
    )


def _write_map(out: str, embeddings: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], title: str) -> str:
    """``map.png``: the embeddings projected to 2-D, coloured by class; returns the projection's name."""
    with storage.atomic_writer(out, MAP) as handle:
        latent_scatter_png(embeddings, labels, class_names, handle, title)
    return projection_of(embeddings)


def show(summary: Summary) -> None:
    print(
        f"wrote {summary.count} embeddings ({summary.dim}-d) to {summary.out}/{PARQUET}, a "
        f"{summary.projection.upper()} map to {summary.out}/map.png ({summary.workers} worker(s) on "
        f"{summary.device}, {summary.seconds:.1f} s)"
    )
