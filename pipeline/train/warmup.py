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

Measured on the toy family (the first toy model: a random SigLIP, d_model 128, batch 32): on direction questions only
(lr 2e-3) validation direction 0.27 @100 steps, 0.70 @200, 0.94 @300; then on every question
from there (lr 1e-3) direction 0.96, order 0.93 @300. Mixing both tasks from the start left
direction at chance after 500 steps (order is learnt first and takes the features). With the
warm encoder frozen, sft of the projector alone through the frozen SmolLM2 gave the first
toy model (a random SigLIP; held-out direction 0.90, order 0.67). Heads that scored options through the LLM's
own input embeddings (linear map, question-conditioned) learned far slower or not at all.

On a VLM base (the module in the LLM's space, after the VLM's connector) the head reads only what the
LLM can read without a per-token computation of its own: each pooled token RMS-normalised (the LLM's
first norm) and not centred, then one Linear on their mean (a linear, position-invariant readout, as
attention averages values). Measured on the toy VLM (configs/toy.yaml, README "The toy model, measured"):
a head that read each sample's tokens centred through a per-token MLP learnt direction (0.97 on
validation) but sft through SmolLM2 from that module stayed at chance on direction (0.13-0.37, 150
steps, LoRA, LoRA + module, fp32): the module had written direction into each token's deviation from
the frame's mean, which averages out. This head: direction from the identity module 0.25 / 0.69 /
0.88 / 0.93 at steps 100-400, and sft [lora] from it reads direction (0.98 at step 100 from a module
that had the centred warm-up first).
"""

from __future__ import annotations

import re
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

HEAD_NAME = "choice_head.safetensors"
READOUTS = ("mean", "attention")  # train.warmup_readout
MAX_WORDS = 1024  # the caption vocabulary: the most frequent words seen in at least two answers
_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def caption_vocabulary(answers: list[str], limit: int = MAX_WORDS) -> list[str]:
    """Words in at least two of the free-text answers (captions, assistant turns), most frequent first."""
    counts = Counter(w for a in answers for w in words_of(a))
    return sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))[:limit]


class ChoiceHead(nn.Module):
    """score(option) = <mean_i MLP(token_i), E[option]> (linear: <W mean_i token_i + b, E[option]>), E one
    learned vector per known option.

    Free-text samples (captions) train a bag-of-words head on the same summary: one logit per
    vocabulary word, `<summary, W[word]> + b[word]`, a sigmoid per word (is it in the caption?)."""

    def __init__(self, d_model: int, options: list[str], hidden: int = 256, words: list[str] | None = None,
                 linear: bool = False, readout: str = "mean", queries: int = 4):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"warm-up readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        self.readout = readout
        if readout == "attention":
            # what one attention layer of the LLM can read: `queries` learned queries over the tokens, each a
            # softmax-weighted sum of linear values; their outputs side by side, one Linear to the summary.
            # Unlike the mean, a query can pick the tokens of one object (e.g. the one that came first) and
            # read that object's colour and shape without the other's mixed in.
            self.queries = nn.Parameter(torch.randn(queries, d_model) * d_model**-0.5)
            self.values = nn.Linear(d_model, d_model)
            self.mix = nn.Linear(queries * d_model, d_model)
        self.options = {o: i for i, o in enumerate(options)}
        self.words = {w: i for i, w in enumerate(words or [])}
        # linear: one Linear on the tokens' mean (what an LLM's attention can read without a per-token nonlinearity)
        if readout == "mean":
            self.token = (nn.Linear(d_model, d_model) if linear else
                          nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model)))
        self.table = nn.Embedding(max(1, len(options)), d_model)
        self.word_table = nn.Embedding(max(1, len(self.words)), d_model)
        self.word_bias = nn.Parameter(torch.zeros(max(1, len(self.words))))
        nn.init.normal_(self.table.weight, std=d_model**-0.5)
        nn.init.normal_(self.word_table.weight, std=d_model**-0.5)

    def summary(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.readout == "attention":
            weights = torch.softmax(self.queries @ pooled.T * pooled.shape[-1] ** -0.5, dim=-1)  # (queries, n)
            return self.mix((weights @ self.values(pooled)).flatten())  # (D,)
        return self.token(pooled).mean(dim=0)  # (D,)

    def forward(self, pooled: torch.Tensor, options: list[str]) -> torch.Tensor:
        """pooled (n, D) tokens of one sample, its option strings -> scores (k,)."""
        summary = self.summary(pooled)
        known = torch.tensor([o in self.options for o in options], device=summary.device)
        ids = torch.tensor([self.options.get(o, 0) for o in options], device=summary.device)
        return torch.where(known, self.table(ids) @ summary, torch.zeros((), device=summary.device))

    def word_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (n, D) -> one logit per vocabulary word (V,)."""
        return self.word_table.weight @ self.summary(pooled) + self.word_bias

    def word_target(self, text: str, device) -> torch.Tensor:
        target = torch.zeros(max(1, len(self.words)), device=device)
        for w in words_of(text):
            if w in self.words:
                target[self.words[w]] = 1.0
        return target


class WarmupObjective:
    """Cross-entropy over a question's options; for a caption, binary cross-entropy per word."""

    def __init__(self, vlm, head: ChoiceHead):
        self.vlm, self.head = vlm, head  # vlm: connector + training reducer (the LLM is not run)

    def _pooled(self, grids: list[torch.Tensor]) -> list[torch.Tensor]:
        pooled = [p.float() for p in self.vlm.visual(grids, project=False)]
        if self.vlm.connector.is_vlm:  # in the LLM's space: each token RMS-normalised, as its first norm sees it
            pooled = [F.rms_norm(p, (p.shape[-1],), eps=1e-6) for p in pooled]
        return pooled

    def scores(self, grids: list[torch.Tensor], samples) -> list[torch.Tensor]:
        return [self.head(p, s.options) for p, s in zip(self._pooled(grids), samples)]

    def loss(self, grids: list[torch.Tensor], samples) -> torch.Tensor:
        losses = []
        for pooled, s in zip(self._pooled(grids), samples):
            if s.is_choice:
                score = self.head(pooled, s.options)
                target = torch.tensor([s.options.index(s.answer)], device=score.device)
                losses.append(F.cross_entropy(score[None], target))
            else:  # summed over the vocabulary, per word in the caption: a caption weighs like a question
                target = self.head.word_target(s.answer, pooled.device)
                bce = F.binary_cross_entropy_with_logits(self.head.word_logits(pooled), target, reduction="sum")
                losses.append(bce / target.sum().clamp(min=1.0))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, cache, samples, batch: int = 32) -> dict:
        """Per-task and overall accuracy of the head (the warm-up's validation figure); for captions,
        `caption_words`: the share of a caption's known words among the head's top-k (k = their number)."""
        from pipeline.train.evaluate import summarize

        records, hits, wanted = [], 0, 0
        for start in range(0, len(samples), batch):
            part = samples[start : start + batch]
            for pooled, s in zip(self._pooled([cache.get(x.media) for x in part]), part):
                if s.is_choice:
                    predicted = s.options[int(self.head(pooled, s.options).argmax())]
                    records.append({"task": s.task, "answer": s.answer, "predicted": predicted,
                                    "id": s.id, "pair": s.pair, "control": s.control})
                    continue
                target = self.head.word_target(s.answer, pooled.device)
                k = int(target.sum())
                if k:
                    hits += int(target[self.head.word_logits(pooled).topk(k).indices].sum())
                    wanted += k
        result = summarize(records)
        if wanted:
            result["caption_words"] = round(hits / wanted, 4)
        return result
