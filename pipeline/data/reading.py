"""Reading WebDataset tar shards: one shard's samples as groups of arrays (or photo bytes), and groups re-cut into
shuffled batches. A bad shard or sample raises naming it, or, in skip mode, is counted and left out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from webdataset.tariterators import tarfile_samples

from pipeline.data.codec import decode_group, group_labels, photo_group
from pipeline.errors import ShardError, SslpipeError

Group = tuple[np.ndarray, np.ndarray, np.ndarray]


def _reason(exn: BaseException) -> str:
    return str(exn.args[0]) if exn.args else type(exn).__name__


@dataclass
class Skipped:
    """Samples of one shard left out by ``data.skip_bad_samples``: how many, and why (shard and first bad key)."""

    count: int
    reason: str


def read_shard(
    url: str, expected: int, image_shape: tuple[int, ...], skipped: list[Skipped] | None = None, *,
    start: int = 0, stop: int | None = None, exclude: np.ndarray | None = None, group_size: int = 1,
) -> Iterator[Group]:
    """Groups ``(images (n, H, W, C), labels (n,), indices (n,))`` of samples ``[start, stop)`` of one shard,
    counting only samples whose class is not in ``exclude`` (``expected`` of them in the whole shard); for photo
    shards (``image_shape == (3,)``) ``images`` is ``(1,)`` object, the file's bytes. Samples before ``start``
    are passed over without decoding their images; reading stops at ``stop``, or at the shard's end, whose sample
    count is then checked. A sample whose labels cannot be read counts as ``group_size`` samples (the
    manifest's images per member), so the pieces after it stay where the plan put them.

    A shard that cannot be read, a sample that cannot be decoded (bad image bytes, a missing label) or a count
    other than the manifest's raises :class:`ShardError` naming the shard and the sample key. With a ``skipped``
    list, bad samples (and the rest of a shard that breaks off) are left out instead and one :class:`Skipped`
    per damaged piece is appended, counting every sample of the piece that the shard did not deliver.
    """
    stop = expected if stop is None else stop
    exclude = np.zeros(0, dtype=np.int64) if exclude is None else exclude
    position, delivered, key, problems = 0, 0, None, []
    try:
        for sample in tarfile_samples([{"url": url}]):
            if position >= stop and stop < expected:
                break
            key = sample.get("__key__", "?")
            count = min(group_size, expected - position)
            try:
                kept = ~np.isin(group_labels(sample), exclude)
                count = int(kept.sum())
                if position + count <= start or position >= stop:
                    position += count
                    continue
                group = photo_group(sample) if len(image_shape) == 1 else decode_group(sample, image_shape)
            except Exception as exn:  # noqa: BLE001 - PIL, numpy and int() raise many types; all mean a bad sample
                if skipped is None:
                    raise ShardError(
                        f"{url}: sample {key!r} cannot be decoded ({_reason(exn)}); re-create the shard with "
                        "`sslpipe shard`, or set data.skip_bad_samples=true to skip and count bad samples"
                    ) from None
                problems.append(f"sample {key!r}: {_reason(exn)}")
                position += count
                continue
            lo, hi = max(0, start - position), min(count, stop - position)
            position += count
            if not kept.all():  # (a mask copies the images: only when a class is left out)
                group = tuple(a[kept] for a in group)
            group = tuple(a[lo:hi] for a in group)
            delivered += len(group[0])
            yield group
    except SslpipeError:
        raise
    except Exception as exn:  # noqa: BLE001 - tarfile, gopen and decoders raise many types; all mean a bad shard
        where = f" after sample {key!r}" if key else ""
        if skipped is None:
            raise ShardError(
                f"{url}: cannot read shard{where} ({_reason(exn)}); it is corrupt or truncated, re-create it with "
                "`sslpipe shard`"
            ) from None
        problems.append(f"unreadable{where} ({_reason(exn)})")
    whole = stop >= expected  # read to the end: the count can be checked
    if (whole and position > expected) or (position < min(stop, expected) and skipped is None):
        raise ShardError(
            f"{url}: holds {position} samples but the manifest says {expected}; the shard is truncated or was "
            "replaced, re-create it with `sslpipe shard`"
        )
    missing = (stop - start) - delivered
    if missing > 0 and skipped is not None:
        skipped.append(Skipped(missing, f"{url}: {'; '.join(problems) or 'ends early'}"))


def shuffled_batches(
    groups: Iterator[tuple[np.ndarray, ...]], batch_size: int, buffer_size: int, rng: np.random.Generator | None
) -> Iterator[tuple[np.ndarray, ...]]:
    """Re-cut groups of samples into batches of ``batch_size`` (the last one partial).

    With ``rng``, samples pass through a shuffle buffer: once ``2 * buffer_size`` samples are pending they are
    permuted together and all but ``buffer_size`` leave as batches, so a sample is mixed with at least
    ``buffer_size`` others. Vectorised: no per-sample Python work.
    """
    pending: list[tuple[np.ndarray, ...]] = []
    count = 0
    threshold = max(2 * buffer_size, batch_size) if rng is not None else batch_size
    keep = buffer_size if rng is not None else 0

    def flush(final: bool) -> Iterator[tuple[np.ndarray, ...]]:
        nonlocal pending, count
        arrays = [np.concatenate(column) for column in zip(*pending)]
        if rng is not None:
            order = rng.permutation(count)
            arrays = [a[order] for a in arrays]
        ready = count if final else (count - keep) // batch_size * batch_size
        for start in range(0, ready, batch_size):
            yield tuple(a[start : start + batch_size] for a in arrays)
        pending = [tuple(a[ready:] for a in arrays)] if ready < count else []
        count -= ready

    for group in groups:
        pending.append(group)
        count += len(group[0])
        if count >= threshold:
            yield from flush(final=False)
    if count:
        yield from flush(final=True)
