import re
from pathlib import Path

import pytest

from pipeline.config import JobConfig, load_config, reference, validate, with_values
from pipeline.config.validation import check_shared
from pipeline.data import read_manifest
from pipeline.errors import ConfigError
from pipeline.methods.byol import BYOLOptions
from pipeline.search.space import load_search


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  epochs: 3\noptim:\n  lr: 1e-3\n")
    config = load_config(
        path, ["train.epochs=1", "data.shards=s3://bucket/x", "train.name=null", "method.temperature=0.2"]
    )
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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_size=0"], "data.batch_size must be > 0, got 0"),
        (["method.name=autoencoder", "method.bottleneck=-4"], "method.bottleneck must be > 0, got -4"),
        (["method.temperature=0"], "method.temperature must be > 0, got 0.0"),
        (["method.name=byol", "method.ema_base=1"], "method.ema_base must be in [0, 1), got 1.0"),
        (["train.num_workers=-1"], "train.num_workers must be >= 0, got -1"),
        (["optim.weight_decay=-1e-4"], "optim.weight_decay must be >= 0, got -0.0001"),
    ],
)
def test_impossible_values_are_refused_by_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("expected section.key=value")):
        load_config(None, ["epochs=1"])
    with pytest.raises(ConfigError, match=re.escape("nope.yaml: job config not found")):
        load_config(tmp_path / "nope.yaml")


JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.mark.parametrize("path", sorted(set(JOBS.glob("*.yaml")) - {JOBS / "runtime_env.yaml"}), ids=lambda p: p.stem)
def test_shipped_jobs_load(path):
    if path.stem.startswith("search_"):
        config, search = load_search(path)
        assert search.space and path.stem.removeprefix("search_").startswith(config.method.name)
    else:
        assert path.stem.startswith(load_config(path).method.name)


@pytest.mark.parametrize(
    ("job", "override", "message"),
    [
        (
            "byol_fashion_mnist",
            "method.temperature=0.1",
            "method.temperature does not apply to byol; byol takes ema_base",
        ),
        (
            "vae_fashion_mnist",
            "method.sparsity=l1",
            "method.sparsity does not apply to vae; vae takes bottleneck, beta",
        ),
        ("simclr_fashion_mnist", "method.bottlenek=3", "unknown key 'method.bottlenek'; simclr takes temperature"),
        ("vae_fashion_mnist", "model.head_dim=64", "model.head_dim does not apply to vae; simclr, byol, dino read it"),
        (
            "simclr_fashion_mnist",
            "method.name=moco",
            "method.name: unknown method 'moco'; choose one of simclr, byol, autoencoder, vae",
        ),
        ("autoencoder_fashion_mnist", "method.sparsity=l2", "method.sparsity: 'l2'; choose one of none, l1, kl"),
        (
            "autoencoder_fashion_mnist",
            "method.corruption=blur",
            "method.corruption: 'blur'; choose one of gaussian, mask, salt_pepper (or null)",
        ),
    ],
)
def test_a_key_the_method_does_not_have_is_refused_naming_what_it_takes(job, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(JOBS / f"{job}.yaml", [override])


def test_the_method_section_holds_only_its_own_options():
    config = load_config(JOBS / "byol_fashion_mnist.yaml")
    assert config.method == BYOLOptions(ema_base=0.99)
    assert [key for key in config.flat() if key.startswith("method.")] == ["method.name", "method.ema_base"]
    vae = with_values(config, {"method.name": "vae", "method.beta": 4.0, "augment.preset": "none"}, "test")
    assert vae.to_dict()["method"] == {
        "name": "vae",
        "bottleneck": 32,
        "beta": 4.0,
        "kl_anneal_steps": 0,
        "free_bits": 0.0,
        "likelihood": "bernoulli",
    }  # decoder_std: Gaussian only
    assert "model.head_dim" in config.flat() and "model.head_dim" not in vae.flat()  # BYOL has heads, a VAE none
    assert JobConfig.from_dict(vae.to_dict()) == vae


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["augment.preset=none"],
            "augment.preset: none cannot serve simclr, whose 2 views of an image would be identical",
        ),
        (["method.name=byol", "augment.preset=none"], "augment.preset: none cannot serve byol"),
        (["model.encoder=linear"], "model.encoder: linear needs an autoencoder's method.bottleneck"),
        (
            ["augment.preset=light", "augment.jitter_strength=0.5"],
            "augment.jitter_strength applies to the simclr preset",
        ),
        (["augment.crop_min_scale=0"], "augment.crop_min_scale must be in (0, 1], got 0.0"),
        (["train.name='it''s \"x\"'"], "train.name: 'it\\'s \"x\"' holds both ' and \" or a backslash"),
        (["train.name=ends\\"], "train.name: 'ends\\\\' holds both ' and \" or a backslash"),
        (["train.seed=-1"], "train.seed must be >= 0, got -1"),
        (["method.name=[simclr]"], "method.name: unknown method ['simclr']"),
        (["model.last_kernel=2"], "model.last_kernel: 2; choose one of 1, 3"),
        (["model.last_kernel='1'"], "model.last_kernel: '1'; choose one of 1, 3"),
    ],
)
def test_validate_refuses_what_cannot_work_together(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_validate_rechecks_a_config_changed_in_python(synthetic_shards):
    config = load_config(None, [f"data.shards={synthetic_shards}"])
    for key, value, message in [
        ("lr", -1.0, "optim.lr must be > 0, got -1.0"),
        ("lr", "-1", "optim.lr: expected float, got '-1'"),  # text is a number only when read from YAML
        ("name", "sgd", "optim.name: 'sgd'; choose one of adamw, adam, lars"),
    ]:
        setattr(config.optim, key, value)
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(config)
        config = load_config(None, [f"data.shards={synthetic_shards}"])
    config.train.epochs = 3.0
    with pytest.raises(ConfigError, match=re.escape("train.epochs: expected int, got 3.0")):
        validate(config)
    config.train.epochs = 3
    config.method.name = "byol"  # the section still holds SimCLR's options
    with pytest.raises(ConfigError, match=re.escape("method.name: 'byol' does not name the options the method")):
        validate(config)
    config = with_values(load_config(None, [f"data.shards={synthetic_shards}"]), {"method.name": "byol"}, "test")
    assert validate(config, read_manifest(synthetic_shards)).method == BYOLOptions()
    config.data.batch_size = 4096  # more than a rank's share of 3000 training images
    with pytest.raises(ConfigError, match="too few for 2 rank"):
        validate(config, read_manifest(synthetic_shards))


def test_photo_jobs_need_labeled_evaluation_shards_and_array_jobs_keep_their_size(
    unlabeled_photo_shards, labeled_photo_shards, synthetic_shards
):
    photos = load_config(None, [f"data.shards={unlabeled_photo_shards}", "data.batch_size=8"])
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"data.shards: {unlabeled_photo_shards} holds unlabeled images; evaluation needs labels: set eval.shards"
        ),
    ):
        validate(photos, read_manifest(unlabeled_photo_shards))
    photos.eval.shards = str(unlabeled_photo_shards)
    with pytest.raises(ConfigError, match=r"eval.shards: .* holds unlabeled images"):
        validate(photos, read_manifest(unlabeled_photo_shards))
    photos.eval.shards = str(labeled_photo_shards)
    assert validate(photos, read_manifest(unlabeled_photo_shards)).data.crop_size == 224
    assert photos.evaluation_shards == str(labeled_photo_shards)
    arrays = load_config(None, [f"data.shards={synthetic_shards}", "data.image_size=64"])
    with pytest.raises(ConfigError, match=r"data.image_size applies to photo shards; .* holds 28x28 arrays"):
        validate(arrays, read_manifest(synthetic_shards))
    arrays.data.image_size = 28  # the arrays' own size: harmless
    validate(arrays, read_manifest(synthetic_shards))


def test_the_readme_lists_every_key_as_declared():
    """The README's table of keys is `sslpipe options` verbatim: a key added, renamed or re-documented in code
    without the README (or the other way round) fails here."""
    readme = (JOBS.parent / "README.md").read_text()
    begin, end = "<!-- sslpipe options: begin -->\n", "\n<!-- sslpipe options: end -->"
    assert begin in readme and end in readme, "the README lost its generated table of keys"
    table = readme.split(begin, 1)[1].split(end, 1)[0]
    assert table == reference(), "README's table of keys is stale: paste the output of `sslpipe options` into it"


def test_gpu_jobs_use_every_gpu_ray_sees_unless_told():
    from pipeline.config import with_workers
    from pipeline.search.runner import trials_that_fit

    gpu = load_config(None, ["train.use_gpu=true", "train.cpus_per_worker=4"])
    assert gpu.train.num_workers is None
    assert with_workers(gpu, {"CPU": 32.0, "GPU": 4.0}).train.num_workers == 4
    assert (
        with_workers(load_config(None, ["train.use_gpu=true", "train.num_workers=2"]), {"GPU": 8.0}).train.num_workers
        == 2
    )
    assert with_workers(load_config(None), {"CPU": 2.0}).train.num_workers == 2  # CPUs: the old default
    with pytest.raises(ConfigError, match=re.escape("train.use_gpu: Ray sees no GPU in this cluster")):
        with_workers(gpu, {"CPU": 16.0})
    # a search sizes its concurrency by GPUs too: 8 GPUs and 64 CPUs hold 4 trials of 2 workers x 4 CPUs
    two = with_workers(load_config(None, ["train.use_gpu=true", "train.num_workers=2", "train.cpus_per_worker=4"]), {})
    assert trials_that_fit(two.train, {"CPU": 64.0, "GPU": 8.0}) == 4
    assert trials_that_fit(two.train, {"CPU": 64.0, "GPU": 1.0}) == 1  # at least one: it waits for its GPUs
    cpu = with_workers(load_config(None), {"CPU": 8.0})
    assert trials_that_fit(cpu.train, {"CPU": 8.0}) == 4


def test_photo_crops_follow_the_augmentation_crop_scale():
    for overrides, scale in [
        ([], (0.08, 1.0)),
        (["augment.preset=light"], (0.5, 1.0)),
        (["augment.crop_min_scale=0.3"], (0.3, 1.0)),
    ]:
        config = load_config(None, overrides)
        assert config.data.training_views(2, config.augment.crop_scale).scale == scale


@pytest.mark.parametrize(
    ("job", "overrides", "message"),
    [
        (
            "simclr_fashion_mnist",
            ["optim.momentum=0.8"],
            "optim.momentum does not apply to adamw; adamw takes lr, weight_decay, warmup_epochs",
        ),
        (
            "simclr_fashion_mnist",
            ["model.encoder=timm:resnet18", "model.width=8"],
            "model.width does not apply to timm:resnet18; timm:resnet18 takes backbone_args, head_hidden, head_dim",
        ),
        (
            "simclr_fashion_mnist",
            ["model.encoder=torchvision:resnet18", "model.embed_dim=64"],
            (
                "model.embed_dim does not apply to torchvision:resnet18; "
                "torchvision:resnet18 takes backbone_args, cifar_stem"
            ),
        ),
        (
            "simclr_fashion_mnist",
            ["model.encoder=timm:resnet18", "model.last_kernel=1"],
            "model.last_kernel does not apply to timm:resnet18",
        ),
        (
            "simclr_fashion_mnist",
            ["model.backbone_args={depth: 3}"],
            (
                "model.backbone_args does not apply to small_cnn; "
                "small_cnn takes width, embed_dim, last_kernel, head_hidden"
            ),
        ),
        (
            "vae_fashion_mnist",
            ["method.decoder_std=0.2"],
            (
                "method.decoder_std does not apply to vae with likelihood bernoulli; "
                "vae with likelihood bernoulli takes bottleneck, beta, kl_anneal_steps, free_bits, likelihood"
            ),
        ),
        (
            "autoencoder_fashion_mnist",
            ["method.corruption_amount=0.5"],
            "method.corruption_amount does not apply to autoencoder with corruption unset",
        ),
        (
            "simclr_fashion_mnist",
            ["finetune.lr=0.1"],
            "unknown section 'finetune'; the finetune section is for `sslpipe finetune`",
        ),
    ],
)
def test_a_key_set_where_it_does_not_apply_is_refused_naming_the_kind_and_what_it_takes(job, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(JOBS / f"{job}.yaml", overrides)


def test_a_job_records_only_the_keys_that_apply_and_a_switch_leaves_the_rest_out():
    demo = load_config(JOBS / "simclr_fashion_mnist.yaml")
    keys = demo.flat()
    assert not [key for key in keys if key.startswith("finetune.")]  # `sslpipe finetune`'s, not pretraining's
    assert "optim.momentum" not in keys and "model.backbone_args" not in keys and "model.cifar_stem" not in keys
    assert keys["model.width"] == 16 and keys["optim.name"] == "adamw"
    lars = with_values(demo, {"optim.name": "lars", "optim.momentum": 0.8}, "test")
    assert lars.flat()["optim.momentum"] == 0.8
    timm = with_values(demo, {"model.encoder": "timm:resnet18"}, "test")  # the job file's width: the small CNN's
    assert {"model.width", "model.embed_dim", "model.last_kernel"}.isdisjoint(timm.flat())
    assert timm.model.width == 24 and JobConfig.from_dict(timm.to_dict()) == timm  # what does not apply: default
    gaussian = with_values(
        load_config(JOBS / "vae_fashion_mnist.yaml"),
        {"method.likelihood": "gaussian", "method.decoder_std": 0.2},
        "test",
    )
    assert gaussian.flat()["method.decoder_std"] == 0.2
    assert "method.decoder_std" not in with_values(gaussian, {"method.likelihood": "bernoulli"}, "test").flat()


def test_on_several_nodes_what_every_worker_uses_must_be_reachable_from_every_node(tmp_path):
    """Shards and checkpoints that Ray workers on all nodes use: a URL, or inside a declared shared folder; refused
    in one line naming the key otherwise. Exports too where search trials (on any node) write them."""
    local = [f"data.shards={tmp_path}/shards", f"train.storage_path={tmp_path}/ray_results"]
    config = load_config(None, local)
    check_shared(config, nodes=1, exports_anywhere=True)  # one machine: anything goes
    with pytest.raises(
        ConfigError,
        match=rf"^train.storage_path: {tmp_path}/ray_results is a folder on one machine, "
        r"but this cluster has 2 nodes .*s3://.*train.shared_folders$",
    ):
        check_shared(config, nodes=2)
    remote = ["train.storage_path=s3://bucket/ray_results", "data.shards=s3://bucket/shards"]
    check_shared(load_config(None, remote), nodes=2)
    with pytest.raises(ConfigError, match=r"^export.out_dir: exports is a folder on one machine"):
        check_shared(load_config(None, remote), nodes=2, exports_anywhere=True)
    with pytest.raises(ConfigError, match=r"^data.shards: "):
        check_shared(load_config(None, ["train.storage_path=s3://bucket/ray_results", *local[:1]]), nodes=3)
    mounted = load_config(None, [*local, f"train.shared_folders=[{tmp_path}]", f"export.out_dir={tmp_path}/exports"])
    check_shared(mounted, nodes=2, exports_anywhere=True)
