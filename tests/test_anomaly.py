"""The anomaly protocols: which classes pretraining reads, the refusals, and ``sslpipe anomaly`` end to end on a
real local Ray (a Tune grid, one pretraining run per class) with a real MLflow store: the one-class VAE's end to end
test too."""

import math
import re

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.commands.anomaly import AnomalySummary, table
from pipeline.config import load_config, validate
from pipeline.data import read_manifest
from pipeline.errors import ConfigError
from pipeline.export import load_encoder
from pipeline.sections import DataConfig


def test_each_protocol_leaves_out_what_it_scores_as_anomalous():
    assert DataConfig().exclude_classes(10) == ()
    assert DataConfig(holdout_class=7).exclude_classes(10) == (7,)
    assert DataConfig(normal_class=2).exclude_classes(5) == (0, 1, 3, 4)


def test_protocol_keys_are_checked_against_the_shards(synthetic_shards):
    manifest = read_manifest(synthetic_shards)
    config = load_config(None, [f"data.shards={synthetic_shards}", "data.normal_class=10"])
    with pytest.raises(ConfigError, match=re.escape("data.normal_class: 10 is not a label of")):
        validate(config, manifest)
    config.data.normal_class, config.data.holdout_class = 1, 2
    with pytest.raises(
        ConfigError, match=re.escape("data.normal_class and data.holdout_class are two anomaly protocols")
    ):
        validate(config, manifest)
    config.data.holdout_class = None
    config.data.batch_size = 512  # 300 images of class 1 cannot fill a batch on each of 2 ranks
    with pytest.raises(ConfigError, match="too few for 2 rank"):
        validate(config, manifest)


def test_the_table_marks_failed_classes_and_bolds_the_means():
    summary = AnomalySummary(
        "a",
        "one-class",
        "r",
        "u",
        ["anomaly_auroc_knn", "pca_anomaly_auroc"],
        [
            {"class": 0, "name": "tee", "anomaly_auroc_knn": 0.91234, "pca_anomaly_auroc": 0.8},
            {"class": 1, "name": "shoe", "anomaly_auroc_knn": math.nan, "pca_anomaly_auroc": 0.6},
        ],
        {"anomaly_auroc_knn": math.nan, "pca_anomaly_auroc": 0.7},
    )
    assert table(summary).splitlines() == [
        "| class | name | kNN cosine | PCA |",
        "| --- | --- | ---: | ---: |",
        "| 0 | tee | 0.912 | 0.800 |",
        "| 1 | shoe | failed | 0.600 |",
        "| mean | | **failed** | **0.700** |",
    ]


def test_bad_protocol_arguments_are_one_line(synthetic_shards, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"data:\n  shards: {synthetic_shards}\n")
    assert main(["anomaly", str(job), "--protocol", "one-class", "--classes", "0,12"]) == 2
    assert "sslpipe: error: --classes: 12 is not a label of" in capsys.readouterr().err


# what a one-class VAE run reports besides the probe: its reconstruction, ELBO and latent use, and every anomaly score
VAE_METRICS = {
    "recon_mse",
    "pca_recon_mse",
    "elbo",
    "kl",
    "active_units",
    "train_kl",
    "train_active_units",
    "train_kl_dim_5",
    "anomaly_auroc_recon",
    "anomaly_auroc_neg_elbo",
    "anomaly_auroc_knn",
    "anomaly_auroc_mahalanobis",
    "pca_anomaly_auroc",
}
VAE_PLOTS = {"latent_scatter.png", "reconstructions.png", "interpolations.png", "prior_samples.png", "anomaly_roc.png"}


@pytest.mark.slow
def test_one_class_protocol_runs_a_vae_per_class_and_tables_every_score(
    ray_local, synthetic_shards, tmp_path, workdir, capsys
):
    """``sslpipe anomaly`` with the VAE, classes 0 and 3: each class's trial is a whole pretraining run of the VAE
    end to end (its metrics, plots and export at the 6-d code), and the table is the trials' own scores."""
    job = tmp_path / "job.yaml"
    job.write_text("")  # the embedded defaults, with the overrides below
    assert (
        main(
            [
                "anomaly",
                str(job),
                "--protocol",
                "one-class",
                "--classes",
                "0,3",
                "--name",
                "oc",
                "method.name=vae",
                "augment.preset=none",
                "method.bottleneck=6",
                "method.kl_anneal_steps=10",
                f"data.shards={synthetic_shards}",
                "data.batch_size=32",
                "data.num_workers=0",
                "model.width=8",
                "train.epochs=2",
                "train.num_workers=0",  # each trial trains in its own Tune process
                "eval.baselines=false",
                "eval.probe_max_iter=50",
                "eval.anomaly_pca_k=4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    header = "| class | name | kNN cosine | Mahalanobis | reconstruction | -ELBO | PCA |"
    assert header in printed and "| mean | |" in printed
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = client.search_runs(["1"], "tags.`mlflow.runName` = 'oc'")
    assert parent.data.tags["sslpipe.anomaly_protocol"] == "one-class"
    assert parent.data.tags["mlflow.source.name"] == "sslpipe anomaly"
    assert {"anomaly.csv", "anomaly.md", "anomaly.png", "trials.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    children = client.search_runs(["1"], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_class = {int(run.data.params["data.normal_class"]): run for run in children}
    assert sorted(by_class) == [0, 3] and all(run.info.status == "FINISHED" for run in children)
    table_rows = [line for line in printed.splitlines() if line.startswith(("| 0 |", "| 3 |"))]
    keys = [
        "anomaly_auroc_knn",
        "anomaly_auroc_mahalanobis",
        "anomaly_auroc_recon",
        "anomaly_auroc_neg_elbo",
        "pca_anomaly_auroc",
    ]
    for line in table_rows:  # the table is the nested runs' own metrics
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        metrics = by_class[int(label)].data.metrics
        assert [float(cell) for cell in cells[1:]] == [pytest.approx(metrics[key], abs=5e-4) for key in keys]
    for run in children:
        metrics = run.data.metrics
        assert metrics.keys() >= VAE_METRICS and np.isfinite(metrics["loss"])
        assert metrics["probe_accuracy"] > 0.25  # chance 0.1; measured 0.31 and 0.45 (2 epochs of one class, 6-d)
        assert metrics["images"] == pytest.approx(300, rel=0.25)  # that class alone: a tenth of the 3000 images
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= VAE_PLOTS
    exports = sorted((workdir / "exports").glob("oc-*"))
    assert len(exports) == 2
    for export in exports:
        assert load_encoder(export)(torch.rand(2, 1, 28, 28)).shape == (2, 6)  # the export ends at the code
    mean = parent.data.metrics["mean_pca_anomaly_auroc"]
    assert mean == pytest.approx(sum(by_class[c].data.metrics["pca_anomaly_auroc"] for c in (0, 3)) / 2)
    assert "sslpipe.best_model" not in parent.data.tags and not client.search_registered_models()  # nothing "best"
