"""Where a training batch becomes its views, by data layout and device.

* Arrays: the loader yields uint8 images; the training process augments them on its device (crop included).
* Photos on a GPU (``data.decode``): with a JPEG engine the loader yields the baseline JPEGs undecoded and the
  training process decodes them on the GPU (nvJPEG) and cuts their random-resized crops there; progressive JPEGs and
  PNGs, which that decoder reads on one host thread or not at all, the loader processes decode and crop (as they do
  every photo for a GPU without one, as many at once as ``data.num_workers``); the GPU augments.
* Photos on CPUs: the loader processes decode, crop and augment (the training process's cores are busy with the
  model; two loader processes made views 2x as fast as one training process augmenting, ``benchmarks/photos.py``).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from augment import ViewAugmenter
from pipeline.config.job_config import JobConfig
from pipeline.data.decode import EncodedImages, batch_views, decodes_on_device, device_reads
from pipeline.data.manifest import Manifest
from pipeline.data.reading import Skipped
from pipeline.data.stream import undecodable


class TrainingViews:
    """``views = training_views(batch_images, epoch)``: ``num_views`` float ``(B, C, S, S)`` tensors on ``device``
    for one loader batch; :meth:`loader_options` are what the :class:`~pipeline.data.ShardLoader` needs for it.
    Random streams: the device-side augmenter is seeded per rank (``augmenter.calls`` continues it after a resume);
    GPU crops per ``(seed, epoch, rank)``; loader-side augmentation from the DataLoader's per-worker seeds."""

    def __init__(self, config: JobConfig, manifest: Manifest, num_views: int, device: torch.device, rank: int) -> None:
        self.photos, self.device, self.rank, self.seed = manifest.photos, device, rank, config.train.seed
        self.skip_bad_samples = config.data.skip_bad_samples
        size = config.data.crop_size if manifest.photos else manifest.image_shape[1]
        self.crops = config.data.training_views(num_views, config.augment.crop_scale)
        self.decode_on_device = manifest.photos and decodes_on_device(config.data.decode, device)
        self.in_loader = manifest.photos and device.type != "cuda"  # (on a GPU the loader may decode, never augment)
        preset, channels, options = config.augment.preset, manifest.channels, config.augment.view_options()
        self.augmenter = ViewAugmenter(
            preset, size, channels, num_views, seed=self.seed * 1000 + rank, crop=not manifest.photos, **options
        )
        self.loader_augmenter = (
            ViewAugmenter(preset, size, channels, num_views, crop=False, **options) if self.in_loader else None
        )
        self.rng = np.random.default_rng([self.seed, 0, rank, 3])
        self.decoded: Counter[str] = Counter()  # this epoch's photos by decoder: "device", "host" (here), "loader"
        self.decode_s = 0.0  # this epoch's seconds decoding here: the data path's, though the training thread's

    def loader_options(self) -> dict:
        transform = self.loader_augmenter.stacked if self.loader_augmenter else None
        return {"views": self.crops, "encoded": device_reads if self.decode_on_device else None, "transform": transform}

    def set_epoch(self, epoch: int) -> None:
        self.rng = np.random.default_rng([self.seed, epoch, self.rank, 3])
        self.decoded.clear()
        self.decode_s = 0.0

    def __call__(
        self, images: torch.Tensor | EncodedImages, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[Skipped]]:
        """``(views, the labels of their images, photos skipped)`` of one loader batch. Photos decoded here that no
        decoder reads are left out with ``data.skip_bad_samples`` (as the loader leaves them out), else stop the
        run with one line."""
        if self.in_loader:
            return list(images.to(self.device, non_blocking=True).unbind(1)), labels, []
        skipped = []
        if isinstance(images, EncodedImages):

            def bad(position: int, reason: str) -> None:
                skipped.append(undecodable(int(indices[position]), reason, self.skip_bad_samples))

            started = time.perf_counter()
            images, kept = batch_views(images, self.crops, self.rng, self.device, bad, self.decoded)
            self.decode_s += time.perf_counter() - started
            labels = labels[kept]
        return self.augmenter(images.to(self.device, non_blocking=True)), labels, skipped
