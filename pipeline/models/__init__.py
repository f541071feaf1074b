"""Encoders (the representation) and heads (projection, predictor)."""

from pipeline.models.encoders import EncoderSpec, build_encoder
from pipeline.models.heads import mlp_head

__all__ = ["EncoderSpec", "build_encoder", "mlp_head"]
