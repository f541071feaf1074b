"""A folder of real photos without a download: random crops of the photographs Debian's wallpaper packages ship.

Each crop is a JPEG (quality 90) of 256-1024 px on its long side, cut from one of :data:`PHOTOS` (all of them
photographs, not renderings), and saved under a subfolder named after its photograph: ``OUT/{train,test}/NAME/``.
Labelled by photograph, the crops make a real fine-grained retrieval task of 23 classes for the probe and kNN.
Needs ``apt-get install plasma-workspace-wallpapers mate-backgrounds`` (``.ci/run`` installs them).

    python -m benchmarks.photo_folder --out data/photo-folder --train-per-class 40 --test-per-class 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

_PLASMA = "/usr/share/wallpapers/{}/contents/images"
_MATE = "/usr/share/backgrounds/mate/nature/{}.jpg"
PHOTOS = {
    **{
        name: _PLASMA.format(name)
        for name in (
            "BytheWater",
            "ColdRipple",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
            "ColorfulCups",
        )
    },
    **{
        name: _MATE.format(name)
        for name in (
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    },
}
PACKAGES = "plasma-workspace-wallpapers mate-backgrounds"


def photo_path(location: str) -> Path:
    """The photograph itself: a file, or the largest picture of a Plasma wallpaper's image folder."""
    path = Path(location)
    if path.is_dir():
        return max(path.iterdir(), key=lambda p: p.stat().st_size)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; `apt-get install {PACKAGES}`")
    return path


def random_crop(image: Image.Image, rng: np.random.Generator, min_side: int, max_side: int) -> Image.Image:
    """A crop of ``image`` with a long side of ``min_side..max_side`` px and an aspect ratio of 3:4 to 4:3."""
    width, height = image.size
    long_side = int(rng.integers(min_side, min(max_side, width, height) + 1))
    short_side = int(long_side * rng.uniform(0.75, 1.0))
    w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return image.crop((left, top, left + w, top + h))


def make_photo_folder(
    out: Path,
    train_per_class: int,
    test_per_class: int,
    *,
    classes: int | None = None,
    min_side: int = 256,
    max_side: int = 1024,
    seed: int = 0,
) -> Path:
    """Write ``out/{train,test}/NAME/NNNN.jpg`` crops of the first ``classes`` photographs; returns ``out``."""
    rng = np.random.default_rng(seed)
    for name, location in list(PHOTOS.items())[:classes]:
        with Image.open(photo_path(location)) as photo:
            photo.load()
            for split, count in (("train", train_per_class), ("test", test_per_class)):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    random_crop(photo, rng, min_side, max_side).save(folder / f"{i:04d}.jpg", quality=90)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--classes", type=int, help="the first N photographs (default: all)")
    parser.add_argument("--min-side", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_photo_folder(
        args.out,
        args.train_per_class,
        args.test_per_class,
        classes=args.classes,
        min_side=args.min_side,
        max_side=args.max_side,
        seed=args.seed,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
