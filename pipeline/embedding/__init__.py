"""Embedding data sets with an exported encoder: what to embed, in pieces (``plan``), and the workers that embed
them (``embedder``)."""
