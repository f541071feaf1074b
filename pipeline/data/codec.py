"""Encoding of image groups as tar members, shared by the shard writer and the stream reader (photos: one
``{key}.jpg`` or ``.png`` and an optional ``{key}.cls``, see :mod:`pipeline.data.photo_shards`).

A tar sample holds ``n`` images of shape ``(H, W, C)``:

* ``n == 1`` (large images): the usual WebDataset layout, ``{key}.png`` (or ``.npy``) and ``{key}.cls``
  (the label as ASCII), with ``key = "{split}-{index:08d}"`` and ``index`` the image's position in the source.
* ``n > 1`` (small images, a *chunk*): ``{key}.images.png`` (the ``n`` images stacked vertically into one
  ``(n*H, W, C)`` PNG, lossless) or ``{key}.images.npy`` (raw ``(n, H, W, C)`` uint8), ``{key}.labels.npy`` and
  ``{key}.indices.npy`` (int64 ``(n,)``). WebDataset's cost is per tar member, so chunks make small images cheap.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

ENCODINGS = ("png", "npy")


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_group(
    split: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, encoding: str, first: int
) -> dict[str, bytes | str]:
    """Tar sample for ``images`` uint8 ``(n, H, W, C)``, ``labels`` and ``indices`` int ``(n,)``.

    ``first`` is the group's position within its shard; it names chunks, which hold many indices.
    """
    n, height, width, channels = images.shape
    if n == 1:
        return {
            "__key__": f"{split}-{int(indices[0]):08d}",
            encoding: _png_bytes(images[0]) if encoding == "png" else _npy_bytes(images[0]),
            "cls": str(int(labels[0])).encode(),
        }
    return {
        "__key__": f"{split}-chunk-{first:08d}",
        f"images.{encoding}": (
            _png_bytes(images.reshape(n * height, width, channels)) if encoding == "png" else _npy_bytes(images)
        ),
        "labels.npy": _npy_bytes(labels.astype(np.int64)),
        "indices.npy": _npy_bytes(indices.astype(np.int64)),
    }


def decode_group(sample: dict, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_group`: ``(images (n, H, W, C) uint8, labels (n,), indices (n,))``.

    Raises ``ValueError`` when members are missing or the wrong shape (the reader adds the shard and key).
    """
    height, width, channels = image_shape
    key = sample.get("__key__", "?")
    if "labels.npy" in sample:
        if "images.png" in sample:
            strip = np.asarray(Image.open(io.BytesIO(sample["images.png"])))
            images = strip.reshape(-1, height, width, channels)
        elif "images.npy" in sample:
            images = _load_npy(sample["images.npy"]).reshape(-1, height, width, channels)
        else:
            raise ValueError("labels but no images.png or images.npy member")
        labels, indices = _load_npy(sample["labels.npy"]), _load_npy(sample["indices.npy"])
    elif "cls" in sample and ("png" in sample or "npy" in sample):
        if "png" in sample:
            image = np.asarray(Image.open(io.BytesIO(sample["png"])))
        else:
            image = _load_npy(sample["npy"])
        images = image.reshape(1, height, width, channels)
        labels = np.array([int(sample["cls"])], dtype=np.int64)
        indices = np.array([int(key.rsplit("-", 1)[1])], dtype=np.int64)
    else:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(f"members {members}, expected an image with .cls or a chunk")
    if not (len(images) == len(labels) == len(indices)):
        raise ValueError(f"{len(images)} images but {len(labels)} labels and {len(indices)} indices")
    return images, labels, indices


def photo_group(sample: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo sample as a group of one: ``(file bytes (1,) object, labels (1,) int64, -1 if unlabeled,
    indices (1,) int64)``; raises ``ValueError`` when it has no ``.jpg``/``.png`` member."""
    member = next((m for m in ("jpg", "png") if m in sample), None)
    if member is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(f"members {members}, expected a .jpg or .png photo")
    data = np.empty(1, dtype=object)
    data[0] = sample[member]
    label = int(sample["cls"]) if "cls" in sample else -1
    index = int(sample["__key__"].rsplit("-", 1)[1])
    return data, np.array([label], dtype=np.int64), np.array([index], dtype=np.int64)


def group_labels(sample: dict) -> np.ndarray:
    """The labels ``(n,)`` of a tar sample of any layout, without decoding its images (``-1``: unlabeled photo);
    raises ``ValueError`` when they cannot be read."""
    if "labels.npy" in sample:
        return _load_npy(sample["labels.npy"]).astype(np.int64)
    if "cls" in sample:
        return np.array([int(sample["cls"])], dtype=np.int64)
    if "jpg" in sample or "png" in sample:
        return np.array([-1], dtype=np.int64)
    members = sorted(k for k in sample if not k.startswith("__"))
    raise ValueError(f"members {members}, expected an image with .cls or a chunk")
