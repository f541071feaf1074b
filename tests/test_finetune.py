"""``sslpipe finetune``: the class-balanced subset (pure, and as shards holding exactly the chosen samples), the
fine-tuning config, one-line refusals, and a real run (one rank in this process) whose results land in MLflow on the
pretraining run and beat chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from webdataset.tariterators import tarfile_samples

from pipeline import storage
from pipeline.cli import main
from pipeline.commands.finetune import PRETRAIN_TAG, finetune_config, metric_name, pct
from pipeline.config import JobConfig, with_values
from pipeline.data import read_manifest
from pipeline.data.subset import balanced_subset, write_subset
from pipeline.errors import ConfigError
from pipeline.export import export_encoder
from pipeline.models import EncoderSpec, build_encoder
from pipeline.track import Tracker
from pipeline.train.finetuning import classifier
from tests.helpers import copied_store, read_split

GREY = EncoderSpec("small_cnn", 1, 28, (0.3,), (0.35,), width=8, embed_dim=32)


def test_balanced_subset_takes_the_same_count_of_every_class_deterministically():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate([500, 300, 200, 4])] + [np.full(50, -1)])
    labels = labels[rng.permutation(len(labels))]  # N = 1004 labeled, K = 4
    small, large = balanced_subset(labels, 0.01, seed=3), balanced_subset(labels, 0.1, seed=3)
    assert np.all(np.diff(small) > 0) and small.dtype == np.int64
    assert np.bincount(labels[small]).tolist() == [3, 3, 3, 3]  # round(0.01 * 1004 / 4) = 3
    assert np.bincount(labels[large]).tolist() == [25, 25, 25, 4]  # round(25.1); class 3 has only 4
    assert np.bincount(labels[balanced_subset(labels, 0.001, seed=3)]).tolist() == [1, 1, 1, 1]  # at least 1
    assert set(small) <= set(large)  # a smaller fraction's subset lies inside a larger one's
    assert np.array_equal(balanced_subset(labels, 0.1, seed=3), large)
    assert not np.array_equal(balanced_subset(labels, 0.1, seed=4), large)
    everything = balanced_subset(labels, 1.0, seed=0)  # round(1004 / 4) = 251 a class, none unlabeled
    assert np.bincount(labels[everything]).tolist() == [251, 251, 200, 4]
    for fraction in (0, 1.5):
        with pytest.raises(ConfigError, match="fraction must be in"):
            balanced_subset(labels, fraction, seed=0)


def test_subset_shards_hold_exactly_the_chosen_samples(synthetic_shards, tmp_path):
    manifest = write_subset(synthetic_shards, tmp_path / "subset", 0.1, seed=0, samples_per_shard=128)
    images, labels, indices = read_split(tmp_path / "subset", "train")
    source_images, source_labels, source_indices = read_split(synthetic_shards, "train")
    assert np.array_equal(source_indices, np.arange(3000))  # source order
    assert np.array_equal(indices, balanced_subset(source_labels, 0.1, seed=0))
    assert np.array_equal(images, source_images[indices]) and np.array_equal(labels, source_labels[indices])
    info = manifest.split("train")
    assert info.num_samples == 300 and [s.num_samples for s in info.shards] == [128, 128, 44]
    assert [sum(s.class_counts[c] for s in info.shards) for c in range(10)] == [30] * 10
    source = read_manifest(synthetic_shards)
    assert manifest.channel_mean == source.channel_mean and manifest.extra["subset_of_sha256"] == source.digest()
    assert read_manifest(tmp_path / "subset") == manifest


def test_photo_subsets_copy_the_files_byte_for_byte(labeled_photo_shards, tmp_path):
    manifest = write_subset(labeled_photo_shards, tmp_path / "subset", 0.25, seed=1)

    def samples(location: Path) -> dict[str, dict]:
        info = read_manifest(location).split("train")
        return {
            s["__key__"]: s
            for shard in info.shards
            for s in tarfile_samples([{"url": storage.join(location, shard.name)}])
        }

    source, subset = samples(labeled_photo_shards), samples(tmp_path / "subset")
    assert manifest.photos and len(subset) == manifest.split("train").num_samples == 24  # 3 of each of 8 classes
    for key, sample in subset.items():
        assert sample["jpg"] == source[key]["jpg"] and sample["cls"] == source[key]["cls"]
    assert sorted(int(s["cls"]) for s in subset.values()) == sorted(list(range(8)) * 3)


def test_the_job_is_the_pretraining_job_less_its_run_keys_with_the_overrides():
    pretraining = with_values(
        JobConfig(),
        {
            "train.name": "simclr-1",
            "train.max_steps_per_epoch": 8,
            "export.onnx": True,
            "data.shards": "/data/unlabeled",
        },
        "test",
    ).to_dict()
    config = finetune_config(pretraining, ["finetune.fractions=[0.05]", "finetune.epochs=[2]"], "/data/labeled")
    assert config.train.name is None and config.train.max_steps_per_epoch is None and not config.export.onnx
    assert config.evaluation_shards == "/data/labeled" and config.finetune.schedule() == [(0.05, 2)]
    with pytest.raises(ConfigError, match=r"finetune.epochs: \[60, 30\] for fractions \[0.05, 0.2, 0.5\]"):
        finetune_config(pretraining, ["finetune.fractions=[0.05,0.2,0.5]"])
    assert finetune_config(pretraining, ["finetune.fractions=[1e-2,0.2]"]).finetune.schedule() == [
        (0.01, 60),
        (0.2, 30),
    ]
    assert [pct(f) for f in (0.01, 0.1, 0.005, 1)] == ["1pct", "10pct", "0.5pct", "100pct"]
    assert metric_name(0.1, "random_init") == "finetune_10pct_random_init_accuracy"


def test_both_inits_start_from_the_same_head_and_the_export_s_weights():
    encoder, _ = build_encoder(GREY)
    weights = {k: v + 1 if v.is_floating_point() else v for k, v in encoder.state_dict().items()}
    torch.manual_seed(5)
    pretrained = classifier(GREY, 10, weights)
    torch.manual_seed(5)
    fresh = classifier(GREY, 10, None)
    assert all(torch.equal(pretrained[0].state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(pretrained[1].weight, fresh[1].weight) and pretrained[1].out_features == 10
    assert not torch.equal(pretrained[0][1][0].weight, fresh[0][1][0].weight)


@pytest.fixture(scope="module")
def pretrained(synthetic_shards, tmp_path_factory, migrated_store) -> tuple[Path, str, str]:
    """``(export folder, tracking URI, run id)``: an export of a small CNN whose ``encoder.json`` names a
    pretraining run in a fresh MLflow store, and names the synthetic shards in its config."""
    folder = tmp_path_factory.mktemp("finetune")
    uri = copied_store(migrated_store, folder)
    run_id = Tracker(uri).start("sslpipe", "simclr-pretraining", {}, "")
    config = with_values(
        JobConfig(),
        {
            "data.shards": str(synthetic_shards),
            "model.width": 8,
            "model.embed_dim": 32,
            "train.name": "simclr-pretraining",
            "data.num_workers": 0,
        },
        "test",
    )
    torch.manual_seed(1)  # not the weights fine-tuning draws for its random initialisation (train.seed 0)
    encoder, _ = build_encoder(GREY)
    export_encoder(
        encoder, GREY, folder / "export", {"method": "simclr", "config": config.to_dict(), "mlflow_run_id": run_id}
    )
    return folder / "export", uri, run_id


def _finetune(capsys, monkeypatch, pretrained, *args: str) -> tuple[int, str, str]:
    export, uri, _ = pretrained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code = main(["finetune", str(export), *args, f"train.storage_path={export.parent / 'ray_results'}"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_inputs_give_one_line_before_ray_starts(
    capsys, monkeypatch, pretrained, unlabeled_photo_shards, even_shards, tmp_path
):
    for args, message in [
        (("--shards", str(unlabeled_photo_shards)), "holds unlabeled images; fine-tuning needs labeled shards"),
        (("--fractions", "0.01,2"), "finetune.fractions: [0.01, 2]; give distinct fractions in (0, 1]"),
        (("--fractions", "0.1,0.2,0.3"), "finetune.epochs: [60, 30] for fractions [0.1, 0.2, 0.3]; give one"),
        (("finetune.lr=0",), "finetune.lr must be > 0"),
        (("--shards", str(tmp_path / "none")), "none does not exist"),
    ]:
        code, _, err = _finetune(capsys, monkeypatch, pretrained, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_a_real_fine_tune_lands_on_the_pretraining_run_and_beats_chance(capsys, monkeypatch, pretrained):
    code, out, err = _finetune(
        capsys,
        monkeypatch,
        pretrained,
        "--fractions",
        "0.2",
        "finetune.epochs=[3]",
        "finetune.batch_size=16",
        "finetune.lr=3e-3",
        "train.num_workers=0",
    )
    assert code == 0, err[-3000:]
    _, uri, run_id = pretrained
    client = MlflowClient(uri)
    pretraining = client.get_run(run_id).data
    accuracy = {init: pretraining.metrics[metric_name(0.2, init)] for init in ("pretrained", "random_init")}
    assert min(accuracy.values()) > 0.5, accuracy  # 10 classes: chance is 0.1
    parent = client.get_run(pretraining.tags["sslpipe.finetune_run_id"])
    assert parent.data.tags[PRETRAIN_TAG] == run_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["finetune_20pct_accuracy"] == accuracy["pretrained"]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["sslpipe.finetune_init"] for c in children) == ["pretrained", "random_init"]
    for child in children:
        data = child.data
        assert data.tags[PRETRAIN_TAG] == run_id and data.tags["sslpipe.finetune_fraction"] == "0.2"
        assert data.metrics["test_accuracy"] == accuracy[data.tags["sslpipe.finetune_init"]]
        assert data.params["finetune.labels"] == "600" and data.params["train.epochs"] == "3"
        assert data.params["data.batch_size"] == "16" and data.params["augment.preset"] == "light"
        assert len(client.get_metric_history(child.info.run_id, "loss")) == 3  # epochs of 37 steps of 16 (one rank)
    assert "| 20% | 600 | 3 |" in out and run_id in out
