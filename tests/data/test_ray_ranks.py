"""Under Ray Train the loader takes its rank from Ray's context (webdataset's default node splitter raises there)."""

import json
from pathlib import Path

import numpy as np
import pytest


def _read_epoch(config: dict) -> None:
    import ray.train

    from pipeline.data import ShardLoader

    loader = ShardLoader(config["shards"], "train", 64, num_workers=2)  # no rank given: it must find Ray's
    indices = np.concatenate([batch[2].numpy() for batch in loader]).tolist()
    record = {"rank": loader.rank, "world_size": loader.world_size, "batches": len(loader), "indices": indices}
    rank = ray.train.get_context().get_world_rank()
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_ray_train_workers_read_disjoint_equal_shares(ray_local, even_shards, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _read_epoch,
        train_loop_config={"shards": str(even_shards), "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="ranks", storage_path=str(tmp_path / "ray")),
    )
    assert trainer.fit().error is None
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["batches"]) for r in records] == [(0, 2, 8), (1, 2, 8)]
    everything = np.concatenate([r["indices"] for r in records])
    np.testing.assert_array_equal(np.sort(everything), np.arange(1024))
