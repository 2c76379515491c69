"""Stage `warmup`: the temporal encoder learns the multiple-choice samples without the LLM.

Backpropagating through a frozen LLM gives the Mamba layers a weak, noisy signal: on the toy
family, 400 `align` steps with the frozen SmolLM2 left `direction` near chance (0.34) while
`order` reached 0.90. Warm-up splits the two jobs: first the temporal encoder (pixel shuffle +
Linear, the Mamba layers) learns from the QA samples through a small choice head, with no LLM
forward pass (~1.2 steps/s at batch 32 here, vs ~0.3 for align at batch 16); then `sft` with
`trainable: [projector]` (or `align`) maps its tokens into the LLM.

Measured on the toy family (experiments, not yet the shipped recipe):
  - a mean-over-tokens MLP + fixed 4-way linear head, direction clips only: validation direction
    0.98 after 300 steps; with that encoder frozen, sft of the projector alone through the frozen
    SmolLM2 reached direction 0.98 after 100 steps (order 0.53: the warm-up had no order clips);
  - this head (options scored in the LLM's embedding space, question-conditioned), direction
    only: 0.40 after 300 steps; on all QA for 400 steps: order 1.0, direction 0.27. Slower than
    the fixed head; why is open (the four option embeddings start nearly parallel?).

The head reads the pooled tokens the way an LLM can: position-invariantly (a mean over
tokens of a per-token MLP, conditioned on the question), and scores each option by a dot
product with the option's text in the frozen LLM's own input embeddings. Nothing of the head
ships: checkpoints carry it only for --resume.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HEAD_NAME = "choice_head.safetensors"


class ChoiceHead(nn.Module):
    """score(option) = <mean_i MLP(token_i + Q(question)), W(option)> / sqrt(d)."""

    def __init__(self, d_model: int, text_dim: int, hidden: int = 256):
        super().__init__()
        self.question = nn.Linear(text_dim, d_model)
        nn.init.zeros_(self.question.weight)  # starts as a no-op: the question only matters once it helps
        nn.init.zeros_(self.question.bias)
        self.token = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.option = nn.Linear(text_dim, d_model)
        self.scale = d_model**-0.5

    def forward(self, pooled: torch.Tensor, question: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
        """pooled (n, D) tokens of one sample, question (text_dim,), options (k, text_dim) -> scores (k,)."""
        summary = self.token(pooled + self.question(question)).mean(dim=0)  # (D,)
        return self.option(options) @ summary * self.scale


class WarmupObjective:
    """Cross-entropy over each sample's options; the samples must be multiple choice."""

    def __init__(self, vlm, head: ChoiceHead):
        self.vlm, self.head = vlm, head  # vlm: connector + training reducer; its LLM gives embeddings
        self._text: dict[str, torch.Tensor] = {}
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def text(self, value: str) -> torch.Tensor:
        """Mean of the frozen LLM's input embeddings of the text's tokens, standardised per channel
        with the whole vocabulary's statistics (raw embeddings are small and nearly parallel,
        which starves the encoder's gradient), (text_dim,), cached."""
        if value not in self._text:
            llm = self.vlm.llm
            if self._stats is None:
                table = llm.embed.weight.detach().float()
                self._stats = (table.mean(dim=0), table.std(dim=0).clamp_min(1e-6))
            ids = llm.tokenizer(value, add_special_tokens=False, return_tensors="pt").input_ids[0].to(llm.device)
            with torch.no_grad():
                mean, std = self._stats
                self._text[value] = (llm.embed(ids).float().mean(dim=0) - mean) / std
        return self._text[value]

    def scores(self, grids: list[torch.Tensor], samples) -> list[torch.Tensor]:
        pooled = self.vlm.visual(grids, project=False)
        return [self.head(p.float(), self.text(s.prompt), torch.stack([self.text(o) for o in s.options]))
                for p, s in zip(pooled, samples)]

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
