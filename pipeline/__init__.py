"""sslpipe: distributed self-supervised pretraining on WebDataset shards with Ray Train."""

__version__ = "0.1.0"
