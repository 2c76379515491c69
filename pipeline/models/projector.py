"""Projector: pooled temporal tokens (d_model) -> the LLM's embedding space."""

from __future__ import annotations

import torch
import torch.nn as nn


class Projector(nn.Module):
    """2-layer MLP, d_model -> llm_hidden. Input (..., d_model), output (..., llm_hidden)."""

    def __init__(self, d_model: int, llm_hidden: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or llm_hidden
        self.fc1 = nn.Linear(d_model, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, llm_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
