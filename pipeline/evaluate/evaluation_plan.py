"""What a run's evaluation does, decided once where the job is configured, so that evaluation reads no job config:
the labeled shards and how to read them, the probe and kNN, the baselines, the anomaly protocol, and what the
method can do (its declared capabilities)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.data import LabeledShards
from pipeline.evaluate.pixels import PixelPlan
from pipeline.methods.capabilities import Capability


@dataclass(frozen=True)
class AnomalyPlan:
    """An anomaly protocol: the labels pretraining left out are the anomalies."""

    excluded: tuple[int, ...]
    protocol: str  # as a title says it: "class 3 held out", "class 1 normal"
    knn_k: int  # the kNN score: mean cosine distance to this many nearest training embeddings
    pca_k: int  # PCA's residual for methods without a bottleneck (those with one use theirs)


@dataclass(frozen=True)
class EvaluationPlan:
    shards: LabeledShards
    class_names: tuple[str, ...]
    method: str  # the method's name, for titles
    capabilities: frozenset[Capability]
    seed: int  # the random encoder's weights and the seeded subsamples
    probe_max_iter: int
    knn_k: int
    knn_temperature: float
    baselines: bool  # also probe raw pixels and a randomly initialised encoder
    pixels: PixelPlan  # what the raw-pixel baseline (and PCA) reads
    anomaly: AnomalyPlan | None
    online_knn: int  # > 0: the bank of the per-epoch online kNN
    amp: bool | str  # ``train.amp``: the feature pass runs in bf16 autocast where training would

    @property
    def reconstructs(self) -> bool:
        return Capability.RECONSTRUCTS in self.capabilities

    def params(self) -> dict[str, int]:
        """What the run's params record about the baselines: the pixels' side and how many images they probe."""
        return self.pixels.params() if self.baselines else {}
