"""Our view augmentation beside Kornia's, the batched library it replaced: the same ops at the same strengths on the
same batches, interleaved, one thread (as a Ray Train worker with ``train.cpus_per_worker=1`` or a loader process
augments).

    python -m benchmarks.augment [--repeats 5]

Cases: the Fashion-MNIST job's views (``simclr`` preset, 28 px gray, crop 0.2-1, brightness and contrast 0.8, batch
256 of 2 views) and photo views as the loader makes them (224 px crops cut while decoding, then flip, colour
jitter, grayscale and blur p=0.5, batch 64 of 2 views). Kornia's side is the pipeline sslpipe ran before: its
``RandomResizedCrop`` in ``resample`` mode (one affine warp for the batch), ``RandomHorizontalFlip``,
``ColorJitter``, ``RandomGrayscale`` and ``RandomGaussianBlur``. Writes ``benchmarks/results/augment.json``
(images/s, ours over Kornia).
"""

from __future__ import annotations

import argparse

import kornia.augmentation as K
import torch
from torch import nn

from augment.presets import ViewAugmenter
from benchmarks.common import command_line, interleaved, medians, print_table, timed, write_results

VIEWS = 2
CASES = {  # name: (image size, channels, batch, crop min scale or None: crops cut while decoding)
    "Fashion-MNIST views, 28 px gray": (28, 1, 256, 0.2),
    "photo views, 224 px RGB": (224, 3, 64, None),
}


def kornia_views(size: int, channels: int, crop_min_scale: float | None, jitter: float = 0.8) -> nn.Sequential:
    """Kornia's ops for one SimCLR view at sslpipe's strengths (crop first when ``crop_min_scale`` is set)."""
    ops = [K.RandomResizedCrop((size, size), (crop_min_scale, 1.0), cropping_mode="resample")] if crop_min_scale else []
    ops.append(K.RandomHorizontalFlip())
    if channels == 1:
        return nn.Sequential(*ops, K.ColorJitter(jitter, jitter, 0.0, 0.0, p=0.8))
    blur = K.RandomGaussianBlur((23, 23), (0.1, 2.0), p=0.5)
    return nn.Sequential(*ops, K.ColorJitter(jitter, jitter, jitter, jitter / 4, p=0.8), K.RandomGrayscale(p=0.2), blur)


def counted(views, batch: torch.Tensor):
    """A call making ``views`` of ``batch`` that returns the number of source images."""

    def run() -> int:
        views(batch)
        return len(batch)

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name, (size, channels, batch_size, crop_min_scale) in CASES.items():
        torch.manual_seed(0)
        if crop_min_scale:
            batch = torch.randint(0, 256, (batch_size, channels, size, size), dtype=torch.uint8)
            ours = ViewAugmenter("simclr", size, channels, VIEWS, crop_min_scale=crop_min_scale, jitter_strength=1.0)
        else:
            batch = torch.randint(0, 256, (batch_size, VIEWS, channels, size, size), dtype=torch.uint8)
            ours = ViewAugmenter("simclr", size, channels, VIEWS, crop=False)
        pipeline = kornia_views(size, channels, crop_min_scale)
        sources = (lambda b: [b] * VIEWS) if crop_min_scale else (lambda b: b.unbind(1))

        def theirs(b: torch.Tensor, pipeline=pipeline, sources=sources) -> list[torch.Tensor]:
            return [pipeline(source.float() / 255).clamp(0, 1) for source in sources(b)]

        rates = medians(
            interleaved({"ours": timed(counted(ours, batch)), "Kornia": timed(counted(theirs, batch))}, args.repeats)
        )
        rows.append(
            {
                "case": name,
                "ours img/s": rates["ours"],
                "Kornia img/s": rates["Kornia"],
                "ours/Kornia": rates["ours"] / rates["Kornia"],
            }
        )
    print_table(rows)
    payload = {"command": command_line("benchmarks.augment", argv), "views": VIEWS, "torch_threads": 1, "cases": rows}
    write_results("augment", payload)
    return payload


if __name__ == "__main__":
    main()
