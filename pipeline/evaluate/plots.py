"""Plots people would rather look at than numbers, saved as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402



def confusion_png(confusion: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix ``(K, K)`` with counts in each cell."""
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(1 + 0.7 * len(class_names), 1 + 0.6 * len(class_names)))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(confusion):
        axes.text(col, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if rates[row, col] > 0.5 else "black")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    return _save(figure, path)


def latent_scatter_png(codes: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """Codes ``(N, k)`` as points coloured by label ``(N,)``: the codes themselves when ``k == 2``, else their
    first two principal components."""
    if codes.shape[1] == 2:
        points, axis_names = codes, ("z1", "z2")
    else:
        points, axis_names = PCA(2, random_state=0).fit_transform(codes), ("PC 1", "PC 2")
    figure, axes = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for label, name in enumerate(class_names):
        chosen = labels == label
        axes.scatter(points[chosen, 0], points[chosen, 1], s=2, alpha=0.5, color=colours(label % colours.N), label=name)
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    axes.set_title(title)
    axes.legend(markerscale=6, fontsize=7, loc="best")
    return _save(figure, path)


def search_png(rows: list[dict], keys: list[str], log_keys: set[str], metric: str, early_metric: str,
               path: Path) -> Path:
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
                    ax.scatter([_plottable(r[key]) for r in chosen], [r[name] for r in chosen], marker=marker,
                               label=status)
            if key in log_keys:
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        if axes[1, column].get_legend_handles_labels()[0]:
            axes[1, column].legend(fontsize=7)
    figure.suptitle(f"{len(rows)} trials, {sum(r['status'] == 'stopped early' for r in rows)} stopped early")
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _isnan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _plottable(value: object) -> object:
    return value if isinstance(value, (int, float)) else str(value)
