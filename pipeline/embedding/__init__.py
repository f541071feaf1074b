"""Embedding data sets with an exported encoder: what to embed, in pieces (``pieces``), and the workers that embed
them (``embedder``)."""
