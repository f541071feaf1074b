"""Photo shards: JPEG bytes kept, other formats converted once, bad files rejected and named, parallel writing."""

import io
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from benchmarks.photo_folder import make_photo_folder
from pipeline.cli import main
from pipeline.data import read_manifest
from pipeline.data.photo_shards import write_photo_shards
from pipeline.data.photos import photo_files
from pipeline.errors import ShardError, SourceError


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory):
    """Real photo crops of 4 photographs, 256-500 px (all below the default --max-side of 512)."""
    return make_photo_folder(tmp_path_factory.mktemp("photos"), 6, 2, classes=4, max_side=500)


def _members(folder):
    """``{key: {ext: bytes}}`` of every shard in ``folder``."""
    samples = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _shard(spec, out, **options):
    files, classes = photo_files(spec, unlabeled=options.pop("unlabeled", False))
    return write_photo_shards(files, classes, out, source={"name": spec}, progress=False, **options)


def test_jpegs_keep_their_bytes_and_the_manifest_describes_them(small_photos, tmp_path):
    manifest = _shard(f"folder:{small_photos}", tmp_path / "shards", samples_per_shard=5)
    sources = sorted((small_photos / "train").rglob("*.jpg"))
    files, classes = photo_files(f"folder:{small_photos}")
    stored = _members(tmp_path / "shards")
    for split, entries in files.items():
        for index, (path, label) in enumerate(entries):
            sample = stored[f"{split}-{index:08d}"]
            assert sample["jpg"] == open(path, "rb").read()  # byte for byte
            assert int(sample["cls"]) == label and classes[label] == path.split("/")[-2]
    source_bytes = sum(p.stat().st_size for p in small_photos.rglob("*.jpg"))
    shard_bytes = sum(p.stat().st_size for p in (tmp_path / "shards").glob("*.tar"))
    # what tar adds: a 512-byte header per member (.jpg, .cls) and padding to 512 bytes, 1024 bytes of end marker
    # and padding to a 10 KiB record per shard; nothing is re-encoded
    assert source_bytes < shard_bytes <= source_bytes + 32 * 4 * 512 + 7 * 11 * 1024
    assert manifest.photos and manifest.image_shape == (3,) and manifest.labeled
    assert manifest.splits["train"].num_samples == len(sources) == 24 and manifest.split("test").num_samples == 8
    assert [len(s.shards) for s in manifest.splits.values()] == [5, 2]
    sizes = np.array([Image.open(p).size[::-1] for p in small_photos.rglob("*.jpg")])
    assert manifest.image_sizes["height"] == [sizes[:, 0].min(), int(np.median(sizes[:, 0])), sizes[:, 0].max()]
    assert manifest.image_sizes["count"] == 32 and manifest.rejects == ()
    pixels = np.concatenate([np.asarray(Image.open(p)).reshape(-1, 3) / 255 for p in sources])
    np.testing.assert_allclose(manifest.channel_mean, pixels.mean(0), atol=0.01)  # from reduced decodes
    np.testing.assert_allclose(manifest.channel_std, pixels.std(0), atol=0.01)
    assert read_manifest(tmp_path / "shards") == manifest


def test_parallel_workers_write_the_same_shards(small_photos, tmp_path):
    one = _shard(f"folder:{small_photos}", tmp_path / "one", samples_per_shard=4)
    two = _shard(f"folder:{small_photos}", tmp_path / "two", samples_per_shard=4, workers=2)
    assert [s.sha256 for s in one.splits["train"].shards] == [s.sha256 for s in two.splits["train"].shards]
    assert one.channel_mean == two.channel_mean and one.image_sizes == two.image_sizes


@pytest.mark.slow
def test_ray_tasks_write_the_same_shards(ray_local, small_photos, tmp_path):
    local = _shard(f"folder:{small_photos}", tmp_path / "local", samples_per_shard=4)
    on_ray = _shard(f"folder:{small_photos}", tmp_path / "ray", samples_per_shard=4, use_ray=True)
    assert [s.sha256 for s in local.splits["test"].shards] == [s.sha256 for s in on_ray.splits["test"].shards]
    assert local.splits == on_ray.splits and local.image_sizes == on_ray.image_sizes


def _jpeg(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    """One of every awkward input, flat (unlabeled): PNG, grayscale, CMYK, EXIF-rotated, too large, truncated,
    not an image at all."""
    folder = tmp_path_factory.mktemp("awkward")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).resize((360, 240))
    rgb.save(folder / "a_png.png")
    rgb.convert("L").save(folder / "b_gray.jpg", quality=90)
    rgb.convert("CMYK").save(folder / "c_cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (folder / "d_rotated.jpg").write_bytes(_jpeg(rgb, exif=exif))
    rgb.resize((1200, 800)).save(folder / "e_large.jpg", quality=90)
    good = _jpeg(rgb)
    (folder / "f_truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "g_text.jpg").write_text("not a photo")
    (folder / "h_plain.jpg").write_bytes(good)
    return folder


def test_awkward_inputs_are_converted_once_or_rejected_with_a_reason(awkward_folder, tmp_path):
    reports = []
    manifest = _shard(f"folder:{awkward_folder}", tmp_path / "shards", report=reports.append)
    stored = {key: sample for key, sample in _members(tmp_path / "shards").items()}
    names = [path.rsplit("/", 1)[1] for path, _ in photo_files(f"folder:{awkward_folder}")[0]["train"]]
    by_name = {names[int(key.rsplit("-", 1)[1])]: sample for key, sample in stored.items()}
    assert sorted(by_name) == ["a_png.png", "b_gray.jpg", "c_cmyk.jpg", "d_rotated.jpg", "e_large.jpg", "h_plain.jpg"]
    assert all(set(sample) == {"jpg"} for sample in by_name.values())  # unlabeled: no .cls
    decoded = {name: Image.open(io.BytesIO(sample["jpg"])) for name, sample in by_name.items()}
    assert {image.mode for image in decoded.values()} == {"RGB"}
    assert decoded["d_rotated.jpg"].size == (240, 360)  # turned upright once
    assert decoded["e_large.jpg"].size == (512, 341)  # long side to --max-side, aspect kept
    assert by_name["h_plain.jpg"]["jpg"] == (awkward_folder / "h_plain.jpg").read_bytes()
    assert not manifest.labeled and manifest.splits["train"].num_samples == 6 and list(manifest.splits) == ["train"]
    rejected = {r["file"].rsplit("/", 1)[1]: r["reason"] for r in manifest.rejects}
    assert sorted(rejected) == ["f_truncated.jpg", "g_text.jpg"]
    assert "truncated" in rejected["f_truncated.jpg"] and "not a readable image" in rejected["g_text.jpg"]
    assert len(reports) == 2 and all(line.startswith("left out ") and "\n" not in line for line in reports)


def test_lossless_stores_converted_images_as_png(awkward_folder, tmp_path):
    _shard(f"folder:{awkward_folder}", tmp_path / "shards", lossless=True)
    stored = _members(tmp_path / "shards")
    assert sorted(ext for sample in stored.values() for ext in sample) == ["jpg"] + ["png"] * 5
    original = np.asarray(Image.open(awkward_folder / "a_png.png"))
    png = next(s["png"] for s in stored.values() if "png" in s and Image.open(io.BytesIO(s["png"])).size == (360, 240)
               and np.array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), original))
    assert png  # the PNG source went through unchanged, pixel for pixel


def test_list_file_with_classes_urls_and_relative_paths(small_photos, tmp_path):
    train = sorted((small_photos / "train").rglob("*.jpg"))[:6]
    lines = [f"{p}\t{p.parent.name}" for p in train[:3]] + [f"file://{p}\t{p.parent.name}" for p in train[3:5]]
    (tmp_path / "near.jpg").write_bytes(train[5].read_bytes())
    lines.append(f"near.jpg\t{train[5].parent.name}")
    (tmp_path / "photos.txt").write_text("\n".join(lines) + "\n")
    manifest = _shard(f"list:{tmp_path / 'photos.txt'}", tmp_path / "shards")
    assert manifest.splits["train"].num_samples + manifest.splits["test"].num_samples == 6
    assert set(manifest.class_names) == {p.parent.name for p in train} and manifest.rejects == ()


def test_list_file_half_labeled_is_one_clear_line(tmp_path):
    (tmp_path / "photos.txt").write_text("a.jpg\tcat\nb.jpg\n")
    with pytest.raises(SourceError, match=r"photos.txt: line 2 differs from line 1 in having a class"):
        photo_files(f"list:{tmp_path / 'photos.txt'}")


def test_images_beside_class_folders_are_refused_unless_unlabeled(small_photos, tmp_path):
    shutil.copytree(small_photos / "train", tmp_path / "mixed")
    shutil.copy(next((small_photos / "test").rglob("*.jpg")), tmp_path / "mixed" / "stray.jpg")
    with pytest.raises(SourceError, match=r"mixed: images \(stray.jpg, ...\) beside class subfolders .* --unlabeled"):
        photo_files(f"folder:{tmp_path / 'mixed'}")
    files, classes = photo_files(f"folder:{tmp_path / 'mixed'}", unlabeled=True)
    assert classes == [] and len(files["train"]) == 25 and {label for _, label in files["train"]} == {-1}


def test_a_folder_without_photos_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    assert main(["shard", f"folder:{tmp_path / 'empty'}", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"sslpipe: error: folder:{tmp_path / 'empty'}: no images found") and "\n" not in error
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_every_file_unreadable_writes_no_manifest(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_text("nope")
    with pytest.raises(ShardError, match="no readable image in split 'train'"):
        _shard(f"folder:{tmp_path / 'bad'}", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_shards_photos_and_reports_rejects(awkward_folder, tmp_path, capsys):
    assert main(["shard", f"folder:{awkward_folder}", "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "train: 6 samples in 1 shards" in out and "left out 2 unreadable files" in out
    assert "left out " in out and "f_truncated.jpg" in out

