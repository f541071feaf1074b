"""View presets: pipelines of our batched ops (:mod:`augment.geometry`, :mod:`augment.color`, :mod:`augment.blur`)
applied to a whole batch on its own device, random parameters per sample drawn there: nothing in a view waits on
the device (``tests/sync_guard.py``).

* ``simclr``: random resized crop (scale 0.08-1), horizontal flip, colour jitter of strength ``s`` with p=0.8
  (brightness/contrast/saturation ``0.8 s``, hue ``0.2 s``), grayscale p=0.2, Gaussian blur p=0.5 (kernel ~10% of
  the side, sigma 0.1-2) only for images of 64 px and more. ``s = 1`` as in SimCLR's ImageNet setting; images of
  32 px and less get the paper's CIFAR variant, ``s = 0.5`` and no blur.
* ``byol``: two asymmetric views (BYOL, Grill et al. 2020): crop 0.08-1, flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8,
  grayscale p=0.2, then blur with p=1.0 / 0.1 (images of 64 px and more) and solarize with p=0.0 / 0.2.
* ``light``: for small grayscale images such as 28x28 Fashion-MNIST: crop 0.5-1, flip, brightness/contrast 0.4
  with p=0.8.
* ``crop``: crop 0.2-1 and flip, nothing else (MAE's views: a masked autoencoder needs no invariance to learn).
* ``none``: the images as they are (autoencoders reconstruct their input; denoising corrupts it in the method).

Two strengths can be changed: ``crop_min_scale`` (the smallest crop's share of the image's area; simclr and byol
0.08, light 0.5, crop 0.2) and, for ``simclr``, ``jitter_strength`` (``s`` above).

Colour operations that need three channels (saturation, hue, grayscale) are left out for 1-channel images.
Photos arrive already cropped (random-resized crops cut while decoding, :mod:`pipeline.data.decode`): with
``crop=False`` the presets leave out their crop and view ``i`` is made from crop ``i``.
"""

from __future__ import annotations

import typing
from typing import Literal

import numpy as np
import torch
from torch import nn

from augment.blur import RandomGaussianBlur
from augment.color import ColorJitter, RandomGrayscale, RandomSolarize
from augment.geometry import RandomHorizontalFlip, RandomResizedCrop
from pipeline.errors import ConfigError

Preset = Literal["simclr", "byol", "light", "crop", "none"]
PRESETS = typing.get_args(Preset)
BLUR_MIN_SIZE = 64
SMALL_IMAGE = 32
CPU_CHUNK_BYTES = 8 << 20


def _color(
    channels: int, brightness: float, contrast: float, saturation: float, hue: float, p: float
) -> list[nn.Module]:
    """RGB: :class:`~augment.color.ColorJitter` (torchvision's jitter, about 3x Kornia's on 224 px CPU batches,
    whose hue step dominates), then grayscale; one channel: brightness and contrast."""
    if channels == 3:
        return [ColorJitter(brightness, contrast, saturation, hue, p=p), RandomGrayscale(p=0.2)]
    return [ColorJitter(brightness, contrast, 0.0, 0.0, p=p)]


def _blur(size: int, p: float) -> list[nn.Module]:
    if size < BLUR_MIN_SIZE or p == 0:
        return []
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    return [RandomGaussianBlur(kernel, (0.1, 2.0), p=p)]


def crop_scale(preset: str, crop_min_scale: float | None = None) -> tuple[float, float]:
    """The random crops' range of shares of the image's area: from ``crop_min_scale`` (else the preset's) to 1."""
    return crop_min_scale or {"light": 0.5, "crop": 0.2}.get(preset, 0.08), 1.0


def jitter_strength_for(size: int, jitter_strength: float | None = None) -> float:
    """``simclr``'s colour jitter strength s for images of ``size`` px: ``jitter_strength``, else the preset's."""
    if jitter_strength is not None:
        return jitter_strength
    return 0.5 if size <= SMALL_IMAGE else 1.0


def check_strengths(preset: str, jitter_strength: float | None) -> None:
    """Refuses a ``jitter_strength`` for a preset that has no such knob."""
    if jitter_strength is not None and preset != "simclr":
        raise ConfigError(f"augment.jitter_strength applies to the simclr preset only, not {preset}; leave it unset")


def _view_pipelines(
    preset: str, size: int, channels: int, crop: bool, crop_min_scale: float | None, jitter_strength: float | None
) -> list[nn.Module]:
    scale = crop_scale(preset, crop_min_scale)
    crops = [RandomResizedCrop(size, scale)] if crop else []
    check_strengths(preset, jitter_strength)
    if preset == "simclr":
        s = jitter_strength_for(size, jitter_strength)
        ops = [*crops, RandomHorizontalFlip(), *_color(channels, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=0.8)]
        return [nn.Sequential(*ops, *_blur(size, 0.5))]
    if preset == "byol":
        views = []
        for blur_p, solarize_p in ((1.0, 0.0), (0.1, 0.2)):
            ops = [*crops, RandomHorizontalFlip(), *_color(channels, 0.4, 0.4, 0.2, 0.1, p=0.8), *_blur(size, blur_p)]
            if solarize_p:
                ops.append(RandomSolarize(p=solarize_p))
            views.append(nn.Sequential(*ops))
        return views
    if preset == "none":
        return [nn.Identity()]
    if preset == "crop":
        return [nn.Sequential(*crops, RandomHorizontalFlip())]
    if preset == "light":
        ops = [*crops, RandomHorizontalFlip()]
        return [nn.Sequential(*ops, ColorJitter(0.4, 0.4, 0.0, 0.0, p=0.8))]
    raise ConfigError(f"unknown augmentation preset {preset!r}: choose one of {', '.join(PRESETS)}")


def to_unit_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` in [0, 255] -> float32 in [0, 1]; float input is returned as float32 unchanged."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()


class ViewAugmenter(nn.Module):
    """``views = augmenter(batch)``: ``batch`` uint8 or float ``(B, C, H, W)`` on any device -> ``num_views``
    float tensors ``(B, C, size, size)`` in [0, 1] on the same device. With ``crop=False`` ``batch`` holds the
    views' crops already, ``(B, num_views, C, size, size)``.

    With ``seed``, call ``i`` draws from a forked RNG seeded by ``(seed, i)`` (reproducible, global RNG
    untouched; set ``calls`` to continue a stream); under DDP give each rank its own seed. ``crop_min_scale`` and
    ``jitter_strength`` change the preset's strengths (unset: its own).
    """

    def __init__(
        self,
        preset: str,
        image_size: int,
        channels: int,
        num_views: int = 2,
        seed: int | None = None,
        crop: bool = True,
        crop_min_scale: float | None = None,
        jitter_strength: float | None = None,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"augmentation needs 1 or 3 channels, got {channels}")
        pipelines = _view_pipelines(preset, image_size, channels, crop, crop_min_scale, jitter_strength)
        self.preset, self.num_views, self.seed, self.calls, self.crop = preset, num_views, seed, 0, crop
        self.pipelines = nn.ModuleList(pipelines[i % len(pipelines)] for i in range(num_views))

    def _views(self, batch: torch.Tensor, stacked: bool) -> torch.Tensor | list[torch.Tensor]:
        """The views: float ``(B, num_views, C, size, size)`` if ``stacked``, else a list of ``(B, C, size, size)``.
        On CPUs a few MiB of images at a time are converted, augmented and clamped while in cache (2x faster on 224
        px batches); small images, and batches on GPUs, are one chunk."""
        sources = batch.unbind(1) if not self.crop else [batch] * self.num_views
        image_bytes = sources[0][0].numel() * 4
        chunk = len(batch) if batch.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // image_bytes)
        if chunk >= len(batch) and not stacked:
            return [
                pipe(to_unit_float(source)).clamp_(0.0, 1.0)
                for pipe, source in zip(self.pipelines, sources, strict=False)
            ]
        out = None
        for view, (pipeline, source) in enumerate(zip(self.pipelines, sources, strict=False)):
            for start in range(0, len(batch), chunk):
                part = pipeline(to_unit_float(source[start : start + chunk])).clamp_(0.0, 1.0)
                if out is None:
                    out = torch.empty((len(batch), self.num_views, *part.shape[1:]), device=part.device)
                out[start : start + chunk, view] = part
        return out if stacked else list(out.unbind(1))

    @torch.no_grad()
    def _seeded(self, batch: torch.Tensor, stacked: bool) -> torch.Tensor | list[torch.Tensor]:
        if self.seed is None:
            return self._views(batch, stacked)
        devices = [batch.device] if batch.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=batch.device.type):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.calls]).generate_state(1)[0]))
            self.calls += 1
            return self._views(batch, stacked)

    def stacked(self, batch: torch.Tensor) -> torch.Tensor:
        """The views of ``batch`` as one float tensor ``(B, num_views, C, size, size)``."""
        return self._seeded(batch, stacked=True)

    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        return self._seeded(batch, stacked=False)
