# `make test` and `make bench` create the virtual environment on first use.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv test test-fast demo bench bench-tta clean

SHARDS ?= data/fashion-mnist
JOB    ?= jobs/simclr_fashion_mnist.yaml

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: venv
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

# Shards Fashion-MNIST once, then pretrains with 2 Ray Train workers, probes, tracks in ./mlflow.db and exports.
demo: venv
	test -f $(SHARDS)/manifest.json || $(BIN)/sslpipe shard fashion-mnist --out $(SHARDS)
	$(BIN)/sslpipe pretrain $(JOB) data.shards=$(SHARDS)

# Loader layouts, then training throughput against the compute ceiling and a torchvision DataLoader (about 20 min).
bench: venv
	$(BIN)/python -m benchmarks.loader
	$(BIN)/python -m benchmarks.throughput

# SimCLR probe accuracy after 5, 10 and 30 minutes of training (about 40 min).
bench-tta: venv
	$(BIN)/python -m benchmarks.time_to_accuracy

clean:
	rm -rf $(VENV) build *.egg-info
