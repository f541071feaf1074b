# `make test` and `make bench` create the virtual environment on first use.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv lint test test-fast gpu-check demo demo-photos bench bench-photos bench-tta bench-eval bench-peer bench-views clean

SHARDS ?= data/fashion-mnist
JOB    ?= jobs/simclr_fashion_mnist.yaml

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'  # bench: lightly, the peer of benchmarks/lightly_peer.py
	touch $@

# ruff's lint and format check, configured in pyproject.toml; `.ci/run` runs it before the tests.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

# On a machine with a CUDA GPU: every method end to end on 224 px photos decoded on the GPU (a few minutes),
# then the photo data path, whose last row is decode + augment alone on the GPU.
gpu-check: venv
	$(BIN)/python -m pytest -m gpu -s -p no:cacheprovider
	$(BIN)/python -m benchmarks.photos --per-class 40 --repeats 2

# Shards Fashion-MNIST once, then pretrains with 2 Ray Train workers, probes, tracks in ./mlflow.db and exports.
demo: venv
	test -f $(SHARDS)/manifest.json || $(BIN)/sslpipe shard fashion-mnist --out $(SHARDS)
	$(BIN)/sslpipe pretrain $(JOB) data.shards=$(SHARDS)

# Real photos (crops of Debian's wallpaper photographs), sharded as they are; SimCLR with a ResNet-18 at reduced
# steps pretrains on them unlabeled and is evaluated on the labeled set (about 5 min on 2 cores).
PHOTOS ?= data/photo-folder
demo-photos: venv
	test -d $(PHOTOS)/train || $(BIN)/python -m benchmarks.photo_folder --out $(PHOTOS)
	test -f data/photos-unlabeled/manifest.json || $(BIN)/sslpipe shard folder:$(PHOTOS)/train --unlabeled \
		--out data/photos-unlabeled --workers 2 --samples-per-shard 100
	test -f data/photos-labeled/manifest.json || $(BIN)/sslpipe shard folder:$(PHOTOS) --out data/photos-labeled \
		--workers 2 --samples-per-shard 100
	$(BIN)/sslpipe pretrain jobs/simclr_photos.yaml

# Photo shards, decoders and the CPU photo data path against ImageFolder + transforms.v2 (about 10 min).
bench-photos: venv
	$(BIN)/python -m benchmarks.photos

# Loader layouts, then training throughput against the compute ceiling and a torchvision DataLoader (about 20 min).
bench: venv
	$(BIN)/python -m benchmarks.loader
	$(BIN)/python -m benchmarks.throughput

# Evaluation time against 10k, 50k and 200k synthetic 64 px images, beside a pretraining epoch (about 40 min).
bench-eval: venv
	$(BIN)/python -m benchmarks.evaluation scaling

# SimCLR probe accuracy after 10 and 30 minutes of training, a schedule sized to each (about 50 min).
bench-tta: venv
	$(BIN)/python -m benchmarks.time_to_accuracy --per-budget --minutes 10 30

# Our plain SimCLR loop against the lightly library, interleaved, after 5 and 10 minutes each, 3 seeds (about 70 min).
bench-peer: venv
	$(BIN)/python -m benchmarks.lightly_peer

# Our views against lightly's (and one part swapped at a time) at equal steps, each arm an MLflow run (about 20 min).
bench-views: venv
	$(BIN)/python -m benchmarks.view_ablation

clean:
	rm -rf $(VENV) build *.egg-info
