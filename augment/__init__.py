"""Batched, device-side augmentation: presets that turn a batch into views (nothing in them waits on the device),
and corruptions."""

from augment.corrupt import CORRUPTIONS, Corruption, corrupt
from augment.presets import PRESETS, ViewAugmenter
from augment.preview import preview_batch, save_image_grid, save_view_grid

__all__ = [
    "CORRUPTIONS",
    "PRESETS",
    "Corruption",
    "ViewAugmenter",
    "corrupt",
    "preview_batch",
    "save_image_grid",
    "save_view_grid",
]
