"""Encoders (the representation), decoders and heads (projection, predictor), and the ``model`` section."""

from pipeline.models.encoders import EncoderSpec, build_encoder, check_encoder, encoder_spec
from pipeline.models.heads import mlp_head
from pipeline.models.model_options import ModelConfig

__all__ = ["EncoderSpec", "ModelConfig", "build_encoder", "check_encoder", "encoder_spec", "mlp_head"]
