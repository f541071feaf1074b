"""Plots people would rather look at than numbers, saved as PNG."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score, roc_curve


def confusion_png(confusion: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix ``(K, K)`` with counts in each cell."""
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(1 + 0.7 * len(class_names), 1 + 0.6 * len(class_names)))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(confusion):
        axes.text(
            col,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if rates[row, col] > 0.5 else "black",
        )
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    return _save(figure, path)


def projection_of(codes: np.ndarray) -> str:
    """How :func:`project_2d` maps ``codes (N, k)`` to 2-D: ``codes`` (k = 2), ``umap`` (where ``umap-learn`` is
    installed and N > 15) or ``pca``."""
    if codes.shape[1] == 2:
        return "codes"
    return "umap" if len(codes) > 15 and importlib.util.find_spec("umap") is not None else "pca"


def project_2d(codes: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """``(points (N, 2), axis names)`` by :func:`projection_of`; PCA pads missing components with zeros."""
    projection = projection_of(codes)
    if projection == "codes":
        return codes, ("z1", "z2")
    if projection == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=0).fit_transform(codes), ("UMAP 1", "UMAP 2")
    k = min(2, *codes.shape)
    points = PCA(k, random_state=0).fit_transform(codes) if k else np.zeros((len(codes), 0))
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1]))), ("PC 1", "PC 2")


def latent_scatter_png(
    codes: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...], path: Path | BinaryIO, title: str
) -> Path | BinaryIO:
    """Codes ``(N, k)`` as points (:func:`project_2d`) coloured by label ``(N,)``, label ``-1`` grey
    (unlabeled); ``path`` may be an open binary file."""
    points, axis_names = project_2d(codes)
    figure, axes = plt.subplots(figsize=(7, 6))
    size = float(np.clip(4000 / max(1, len(points)), 1, 20))
    unlabeled = labels < 0
    if unlabeled.any():
        axes.scatter(points[unlabeled, 0], points[unlabeled, 1], s=size, alpha=0.5, color="0.5", label="unlabeled")
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for label, name in enumerate(class_names):
        chosen = labels == label
        axes.scatter(
            points[chosen, 0], points[chosen, 1], s=size, alpha=0.5, color=colours(label % colours.N), label=name
        )
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    axes.set_title(title, fontsize=9)
    if len(class_names) <= 30 and (class_names or unlabeled.any()):
        axes.legend(markerscale=max(1.0, 30 / size) ** 0.5, fontsize=7, loc="best")
    return _save(figure, path)


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """ROC curves of anomaly scores: ``{name: (scores (N,), anomalous (N,) bool)}``, the AUROC in the legend."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for name, (scores, anomalous) in curves.items():
        false_positive, true_positive, _ = roc_curve(anomalous, scores)
        axes.plot(false_positive, true_positive, label=f"{name} (AUROC {roc_auc_score(anomalous, scores):.3f})")
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    axes.set_xlabel("false positive rate (normal images flagged)")
    axes.set_ylabel("true positive rate (anomalies flagged)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def anomaly_png(rows: list[dict], scores: dict[str, str], path: Path, title: str) -> Path:
    """Grouped bars: per class (``rows``' ``name``), the AUROC of each score (``{metric: label}``), chance at 0.5."""
    figure, axes = plt.subplots(figsize=(1.5 + 0.9 * len(rows), 4.5))
    width = 0.8 / max(1, len(scores))
    for index, (metric, label) in enumerate(scores.items()):
        values = [row[metric] for row in rows]
        mean = np.nanmean(values) if not np.isnan(values).all() else math.nan
        axes.bar(
            np.arange(len(rows)) + (index - (len(scores) - 1) / 2) * width,
            values,
            width,
            label=f"{label} (mean {mean:.3f})",
        )
    axes.axhline(0.5, color="0.6", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(rows)), [row["name"] for row in rows], rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0.3, 1.0)
    axes.set_ylabel("AUROC")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="lower left")
    return _save(figure, path)


def search_png(
    rows: list[dict], keys: list[str], log_keys: set[str], metric: str, early_metric: str, path: Path
) -> Path:
    """One column per searched parameter (``keys``; ``log_keys`` on a log axis): the final ``metric`` of finished
    trials (top) and the last ``early_metric`` of every trial, stopped ones marked x (bottom), against the
    parameter's value (trials that did not set it left out)."""
    keys = keys or ["trial"]
    figure, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), 6.5), squeeze=False)
    for column, key in enumerate(keys):
        for row, name in enumerate((metric, early_metric)):
            ax = axes[row, column]
            for status, marker in (("finished", "o"), ("stopped early", "x"), ("error", "s")):
                chosen = [r for r in rows if r["status"] == status and not _isnan(r[name]) and r[key] is not None]
                if chosen and (row == 1 or status == "finished"):
                    ax.scatter(
                        [_plottable(r[key]) for r in chosen], [r[name] for r in chosen], marker=marker, label=status
                    )
            if key in log_keys:
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        if axes[1, column].get_legend_handles_labels()[0]:
            axes[1, column].legend(fontsize=7)
    figure.suptitle(f"{len(rows)} trials, {sum(r['status'] == 'stopped early' for r in rows)} stopped early")
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path | BinaryIO) -> Path | BinaryIO:
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
    return path


def _isnan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _plottable(value: object) -> object:
    return value if isinstance(value, (int, float)) else str(value)
