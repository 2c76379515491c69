"""Stage `warmup`: the temporal encoder learns the multiple-choice samples without the LLM.

Backpropagating through a frozen LLM gives the Mamba layers a weak, noisy signal: on the toy
family, 400 `align` steps with the frozen SmolLM2 left `direction` near chance (0.34) while
`order` reached 0.90. Warm-up splits the two jobs: first the temporal encoder (pixel shuffle +
Linear, the Mamba layers) learns from the QA samples through a small choice head, with no LLM
forward pass (~1.3 steps/s at batch 32 here, vs ~0.3 for align at batch 16); then `sft` with
`trainable: [projector]` maps its tokens into the LLM, the warm encoder frozen.

The head reads the pooled tokens the way an LLM can, position-invariantly: a per-token MLP,
averaged over tokens, then a dot product with one learned vector per option string seen in
the training data (a linear classifier over the data's answer vocabulary; an option never
seen in training scores 0). Nothing of the head ships: checkpoints carry it for --resume.

Measured on the toy family (configs/toy.yaml geometry, batch 32): on direction questions only
(lr 2e-3) validation direction 0.27 @100 steps, 0.70 @200, 0.94 @300; then on every question
from there (lr 1e-3) direction 0.96, order 0.93 @300. Mixing both tasks from the start left
direction at chance after 500 steps (order is learnt first and takes the features). With the
warm encoder frozen, sft of the projector alone through the frozen SmolLM2 gives the shipped
toy model (held-out direction 0.90, order 0.67). Heads that scored options through the LLM's
own input embeddings (linear map, question-conditioned) learned far slower or not at all.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HEAD_NAME = "choice_head.safetensors"


class ChoiceHead(nn.Module):
    """score(option) = <mean_i MLP(token_i), E[option]>, E one learned vector per known option."""

    def __init__(self, d_model: int, options: list[str], hidden: int = 256):
        super().__init__()
        self.options = {o: i for i, o in enumerate(options)}
        self.token = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.table = nn.Embedding(len(options), d_model)
        nn.init.normal_(self.table.weight, std=d_model**-0.5)

    def forward(self, pooled: torch.Tensor, options: list[str]) -> torch.Tensor:
        """pooled (n, D) tokens of one sample, its option strings -> scores (k,)."""
        summary = self.token(pooled).mean(dim=0)  # (D,)
        known = torch.tensor([o in self.options for o in options], device=summary.device)
        ids = torch.tensor([self.options.get(o, 0) for o in options], device=summary.device)
        return torch.where(known, self.table(ids) @ summary, torch.zeros((), device=summary.device))


class WarmupObjective:
    """Cross-entropy over each sample's options; the samples must be multiple choice."""

    def __init__(self, vlm, head: ChoiceHead):
        self.vlm, self.head = vlm, head  # vlm: connector + training reducer (the LLM is not run)

    def scores(self, grids: list[torch.Tensor], samples) -> list[torch.Tensor]:
        pooled = self.vlm.visual(grids, project=False)
        return [self.head(p.float(), s.options) for p, s in zip(pooled, samples)]

    def loss(self, grids: list[torch.Tensor], samples) -> torch.Tensor:
        losses = [F.cross_entropy(score[None], torch.tensor([s.options.index(s.answer)], device=score.device))
                  for score, s in zip(self.scores(grids, samples), samples)]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, cache, samples, batch: int = 32) -> dict:
        """Per-task and overall accuracy of the head (the warm-up's validation figure)."""
        from pipeline.train.evaluate import summarize

        records = []
        for start in range(0, len(samples), batch):
            part = samples[start : start + batch]
            for score, s in zip(self.scores([cache.get(x.media) for x in part], part), part):
                records.append({"task": s.task, "answer": s.answer, "predicted": s.options[int(score.argmax())],
                                "id": s.id, "pair": s.pair, "control": s.control})
        return summarize(records)
