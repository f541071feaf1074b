"""``sslpipe embed``: ids, labels and embeddings of shards and image folders against what the data holds and the
encoder gives, 2 Ray workers against one process, and the one-line refusals."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from webdataset.tariterators import tarfile_samples

from pipeline import storage
from pipeline.cli import main
from pipeline.commands.embed import embed
from pipeline.data import open_source, read_manifest
from pipeline.data.decode import PhotoViews, photo_views
from pipeline.embedding.embedder import bounded_batches, fit_size, match_channels
from pipeline.export import export_encoder
from pipeline.models import EncoderSpec, build_encoder

GREY = EncoderSpec("small_cnn", 1, 28, (0.3,), (0.35,), width=8, embed_dim=32)
RGB = EncoderSpec("small_cnn", 3, 32, (0.45, 0.45, 0.4), (0.25, 0.25, 0.27), width=8, embed_dim=24)


def _export(spec: EncoderSpec, out: Path) -> tuple[Path, torch.nn.Module]:
    """An export of a randomly initialised encoder whose BatchNorm statistics moved off their defaults."""
    torch.manual_seed(0)
    encoder, _ = build_encoder(spec)
    encoder.train()(torch.rand(16, spec.channels, spec.image_size, spec.image_size))
    export_encoder(encoder, spec, out, {"method": "simclr"})
    return out, encoder.eval()


def _rows(out: Path) -> dict:
    """The parquet's columns, embeddings as float32 ``(N, D)``."""
    table = pq.read_table(out / "embeddings.parquet")
    assert str(table.schema.field("embedding").type).startswith("fixed_size_list<element: float>")
    rows = table.to_pydict()
    rows["embedding"] = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
    return rows


def _shard_samples(location: Path) -> list[dict]:
    """Every tar sample of every shard, in manifest order, read with webdataset alone (split added)."""
    manifest = read_manifest(location)
    return [
        {**sample, "split": split}
        for split, info in manifest.splits.items()
        for shard in info.shards
        for sample in tarfile_samples([{"url": storage.join(location, shard.name)}])
    ]


def _photo_input(blobs: list[bytes], size: int) -> torch.Tensor:
    """Evaluation's center crops of photo files, float in [0, 1]."""
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    return photo_views(tensors, PhotoViews(size), None, torch.device("cpu"))[:, 0].float() / 255


@pytest.fixture(scope="module")
def grey_export(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    return _export(GREY, tmp_path_factory.mktemp("grey-export"))


@pytest.fixture(scope="module")
def synthetic_embedded(grey_export, synthetic_shards, tmp_path_factory) -> Path:
    """``synthetic_shards`` embedded in this process; pieces of 300 become 512 (whole 256-image members), so each
    700-sample shard is read as [0, 512) and [512, 700)."""
    out = tmp_path_factory.mktemp("synthetic-embedded")
    embed(str(grey_export[0]), str(synthetic_shards), str(out), workers=0, piece_size=300, progress=False)
    return out


def test_shard_ids_and_labels_round_trip_and_rows_are_the_encoder_of_those_images(
    grey_export, synthetic_shards, synthetic_embedded
):
    rows = _rows(synthetic_embedded)
    samples = _shard_samples(synthetic_shards)
    assert all("indices.npy" in s for s in samples)  # chunked shards: a member holds many images
    indices = [np.load(io.BytesIO(s["indices.npy"])) for s in samples]
    expected_ids = [f"{s['split']}-{i:08d}" for s, chunk in zip(samples, indices, strict=True) for i in chunk.tolist()]
    expected_labels = np.concatenate([np.load(io.BytesIO(s["labels.npy"])) for s in samples])
    assert rows["id"] == expected_ids and len(set(rows["id"])) == 3500
    assert rows["label"] == expected_labels.tolist()
    assert rows["split"] == [s["split"] for s, chunk in zip(samples, indices, strict=True) for _ in chunk]
    assert rows["class_name"] == [f"class{label}" for label in expected_labels.tolist()]
    # the same images generated again by the source, by index: the encoder applied directly
    source = open_source("synthetic", num_train=3000, num_test=500)
    for split in ("train", "test"):
        chosen = [i for i, s in enumerate(rows["split"]) if s == split]
        images, labels = source.splits[split].load(np.array([int(rows["id"][i][-8:]) for i in chosen]))
        assert labels.tolist() == [rows["label"][i] for i in chosen]
        with torch.no_grad():
            expected = grey_export[1](torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()
        np.testing.assert_allclose(rows["embedding"][chosen], expected, rtol=1e-4, atol=1e-5)
    summary = json.loads((synthetic_embedded / "embed.json").read_text())
    assert summary["count"] == 3500 and summary["dim"] == 32 and summary["map"] == "pca" and summary["workers"] == 1
    with Image.open(synthetic_embedded / "map.png") as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 100


def test_photo_shard_ids_are_the_sample_keys(labeled_photo_shards, tmp_path):
    model, encoder = _export(RGB, tmp_path / "export")
    embed(str(model), str(labeled_photo_shards), str(tmp_path / "out"), workers=0, batch_size=20, progress=False)
    rows = _rows(tmp_path / "out")
    samples = _shard_samples(labeled_photo_shards)
    classes = read_manifest(labeled_photo_shards).class_names
    assert rows["id"] == [s["__key__"] for s in samples]
    assert rows["label"] == [int(s["cls"]) for s in samples]
    assert rows["class_name"] == [classes[int(s["cls"])] for s in samples]
    with torch.no_grad():
        expected = encoder(_photo_input([s["jpg"] for s in samples], RGB.image_size)).numpy()
    np.testing.assert_allclose(rows["embedding"], expected, rtol=1e-4, atol=1e-5)


def test_folder_ids_are_relative_paths_and_photos_meet_a_grey_encoder_as_center_crops(
    grey_export, photo_folder, tmp_path
):
    embed(
        str(grey_export[0]), f"folder:{photo_folder}", str(tmp_path / "out"), workers=0, batch_size=30, progress=False
    )
    rows = _rows(tmp_path / "out")
    files = sorted(photo_folder.rglob("*.jpg"), key=lambda p: (p.parts[-3] != "train", p.parts[-2], p.name))
    assert rows["id"] == [str(p.relative_to(photo_folder)) for p in files] and len(files) == 128
    assert rows["split"] == [p.parts[-3] for p in files]
    classes = sorted(p.name for p in (photo_folder / "train").iterdir())
    assert rows["class_name"] == [p.parts[-2] for p in files]
    assert rows["label"] == [classes.index(p.parts[-2]) for p in files]
    rgb = _photo_input([p.read_bytes() for p in files], GREY.image_size)
    grey = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():
        expected = grey_export[1](grey).numpy()
    np.testing.assert_allclose(rows["embedding"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_ray_workers_give_the_rows_of_one_process(
    ray_local, grey_export, synthetic_shards, synthetic_embedded, photo_folder, tmp_path
):
    summary = embed(
        str(grey_export[0]), str(synthetic_shards), str(tmp_path / "ray"), workers=2, piece_size=300, progress=False
    )
    assert summary.workers == 2 and summary.count == 3500
    alone, ray = _rows(synthetic_embedded), _rows(tmp_path / "ray")
    assert ray["id"] == alone["id"] and ray["label"] == alone["label"] and ray["split"] == alone["split"]
    np.testing.assert_allclose(ray["embedding"], alone["embedding"], rtol=0, atol=1e-5)
    # an image folder in pieces of 8 files
    for workers, name in ((0, "folder-alone"), (2, "folder-ray")):
        embed(
            str(grey_export[0]),
            str(photo_folder / "test"),
            str(tmp_path / name),
            workers=workers,
            piece_size=8,
            progress=False,
        )
    alone, ray = _rows(tmp_path / "folder-alone"), _rows(tmp_path / "folder-ray")
    assert ray["id"] == alone["id"] and len(ray["id"]) == 32 and ray["label"] == alone["label"]
    assert set(ray["split"]) == {None}  # a folder without train/test subfolders has no split
    np.testing.assert_allclose(ray["embedding"], alone["embedding"], rtol=0, atol=1e-5)


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr, less the progress bar's lines."""
    code = main(["embed", *args, "--workers", "0"])
    err = capsys.readouterr().err.replace("\r", "\n")
    return code, "\n".join(line for line in err.splitlines() if line.strip() and not line.startswith("embed:"))


def test_bad_inputs_give_one_line(capsys, grey_export, synthetic_shards, tmp_path):
    model, out = str(grey_export[0]), str(tmp_path / "out")
    for args, message in [
        ((str(tmp_path / "no-export"), str(synthetic_shards)), "no-export: no encoder.json found"),
        ((model, str(tmp_path / "no-data")), "no-data: no such shard folder or image folder"),
        ((model, str(synthetic_shards), "--split", "val"), "has no split 'val'; it has test, train"),
    ]:
        code, err = _cli(capsys, *args, "--out", out)
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert main(["embed", model, str(synthetic_shards), "--split", "test", "--out", out, "--workers", "0"]) == 0
    assert "wrote 500 embeddings (32-d)" in capsys.readouterr().out
    code, err = _cli(capsys, model, str(synthetic_shards), "--split", "test", "--out", out)
    assert code == 2 and len(err.splitlines()) == 1 and "embeddings.parquet exists; pass --overwrite" in err
    code, _ = _cli(capsys, model, str(synthetic_shards), "--split", "train", "--out", out, "--overwrite")
    assert code == 0 and len(_rows(Path(out))["id"]) == 3000


def test_an_undecodable_image_is_named_or_skipped_and_counted(capsys, grey_export, photo_folder, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted((photo_folder / "test").rglob("*.jpg"))[:3]:
        shutil.copy(photo, folder / f"{photo.parent.name}-{photo.name}")
    (folder / "broken.jpg").write_bytes((folder / f"{photo.parent.name}-{photo.name}").read_bytes()[:300])
    model, out = str(grey_export[0]), tmp_path / "out"
    code, err = _cli(capsys, model, str(folder), "--out", str(out))
    assert code == 2 and len(err.splitlines()) == 1 and "broken.jpg: not a readable image" in err, err
    assert "--skip-bad-samples" in err and not (out / "embeddings.parquet").exists()
    code, _ = _cli(capsys, model, str(folder), "--out", str(out), "--skip-bad-samples")
    rows = _rows(out)
    assert code == 0 and len(rows["id"]) == 3 and "broken.jpg" not in rows["id"]
    assert rows["label"] == [None] * 3 and rows["class_name"] == [None] * 3  # a flat folder is unlabeled
    assert json.loads((out / "embed.json").read_text())["skipped"] == 1


def test_channels_and_sizes_are_matched_to_the_encoder():
    rgb = torch.rand(2, 3, 5, 5)
    grey = match_channels(rgb, 1)
    pil = np.asarray(Image.fromarray((rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).convert("L"))
    assert grey.shape == (2, 1, 5, 5) and np.abs(grey[0, 0].numpy() * 255 - pil).max() <= 1.0
    assert torch.equal(match_channels(grey, 3), grey.expand(-1, 3, -1, -1))
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert fit_size(images, 28) is images
    assert fit_size(images, 32).shape == (2, 1, 32, 32) and fit_size(images[..., 2:], 16).shape == (2, 1, 16, 16)


def test_photo_batches_are_bounded_by_their_decoded_size():
    """A batch of photos holds at most ``batch_size`` of them and at most the bytes they decode to (from their
    headers): 256 photos of 12 MP would be ~9 GB on the device at once. An unreadable photo counts as nothing (its
    decoding will say why), and a photo larger than the budget goes alone."""

    def jpeg(side):
        buffer = io.BytesIO()
        Image.new("RGB", (side, side)).save(buffer, format="JPEG")
        return buffer.getvalue()

    sides = [100, 100, 100, 300, 100, 100]
    samples = [(f"id{i}", 0, jpeg(side), f"name{i}") for i, side in enumerate(sides)]
    samples.insert(2, ("bad", 0, b"not an image", "bad"))
    chunks = list(bounded_batches(samples, 4, max_bytes=3 * 100 * 100 * 3))
    assert [[sample[0] for sample in chunk] for chunk in chunks] == [
        ["id0", "id1", "bad", "id2"],
        ["id3"],
        ["id4", "id5"],
    ]
    arrays = [(i, 0, np.zeros((28, 28, 1), np.uint8), "") for i in range(10)]
    assert [len(chunk) for chunk in bounded_batches(arrays, 4, max_bytes=1 << 30)] == [4, 4, 2]
