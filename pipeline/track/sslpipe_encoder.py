"""The registered encoder as ``mlflow.pytorch.load_model`` returns it: the encoder's ``torch.export`` program in a
regular ``nn.Module``. MLflow ships this file with the model (``code/sslpipe_encoder.py``, a top-level module) and
puts it on the path when it loads the model, so loading needs torch and MLflow only, neither sslpipe nor the
classes the encoder was built from. It imports nothing but torch: keep it that way.

A bare ``ExportedProgram.module()`` (MLflow's ``pt2`` format) raises ``NotImplementedError`` on ``.eval()``.
"""

from __future__ import annotations

import io

import torch
from torch import nn


class ExportedEncoder(nn.Module):
    """float ``(B, C, H, W)`` in [0, 1] -> ``(B, D)``: an encoder's program, exported in eval mode (BatchNorm uses
    its running statistics). ``.eval()``, ``.to(device)`` and ``.parameters()`` work as on any module;
    ``.train()`` refuses, since the program cannot switch BatchNorm to batch statistics. Pickles as its program."""

    def __init__(self, program: bytes) -> None:
        """``program``: the bytes ``torch.export.save`` wrote."""
        super().__init__()
        self._program = program
        self.exported = torch.export.load(io.BytesIO(program)).module()
        self.training = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.exported(images)

    def train(self, mode: bool = True) -> ExportedEncoder:
        if mode:
            raise NotImplementedError(
                "this encoder is an inference export: its BatchNorm is fixed at the running statistics. To "
                "fine-tune, rebuild it from the model's encoder.safetensors and encoder.json (sslpipe's "
                "pipeline.export.load_encoder does)"
            )
        self.training = False  # the program itself has no modes (its own train() raises)
        return self

    def __reduce__(self) -> tuple:
        return ExportedEncoder, (self._program,)
