import re
from pathlib import Path

import pytest

from pipeline.config import JobConfig, load_config
from pipeline.search_config import load_search
from pipeline.errors import ConfigError


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  epochs: 3\noptim:\n  lr: 1e-3\n")
    config = load_config(path, ["train.epochs=1", "data.shards=s3://bucket/x", "train.name=null", "method.temperature=0.2"])
    assert config.train.epochs == 1
    assert config.optim.lr == 0.001  # PyYAML reads 1e-3 as a string; it is converted
    assert config.data.shards == "s3://bucket/x"
    assert config.train.name is None
    assert config.method.temperature == 0.2
    assert JobConfig.from_dict(config.to_dict()) == config


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"job.yaml: train: unknown key 'epoch'; keys are epochs, num_workers"):
        load_config(path)


def test_unknown_section_and_bad_type():
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_config(None, ["trian.epochs=1"])
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got 'many'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got 1.5"):
        load_config(None, ["train.epochs=1.5"])


@pytest.mark.parametrize(("override", "message"), [
    ("data.batch_size=0", "data.batch_size must be > 0, got 0"),
    ("method.bottleneck=-4", "method.bottleneck must be > 0, got -4"),
    ("method.temperature=0", "method.temperature must be > 0, got 0.0"),
    ("method.ema_base=1", "method.ema_base must be in [0, 1), got 1.0"),
    ("train.num_workers=0", "train.num_workers must be > 0, got 0"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0, got -0.0001"),
])
def test_impossible_values_are_refused_by_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["epochs=1"])
    with pytest.raises(ConfigError, match="nope.yaml: job config not found"):
        load_config(tmp_path / "nope.yaml")


JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.mark.parametrize("path", sorted(set(JOBS.glob("*.yaml")) - {JOBS / "runtime_env.yaml"}), ids=lambda p: p.stem)
def test_shipped_jobs_load(path):
    if path.stem.startswith("search_"):
        config, search = load_search(path)
        assert search.space and path.stem.removeprefix("search_").startswith(config.method.name)
    else:
        assert path.stem.startswith(load_config(path).method.name)
