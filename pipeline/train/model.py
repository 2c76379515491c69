"""The STORM parts and the LLM as one trainable model: visual tokens spliced into the chat prompt.

    grids (B, T, g, g, C) --StormConnector.visual_tokens--> visual (B, n, H)
    [prompt before <video>] [visual] [prompt after <video>] [answer <eos>]
     labels: -100 ...........-100 ........ -100 ............ answer ids

The loss is on the answer tokens only (prompt and visual positions masked with -100,
as LLaVA does). Logits are computed only where a label is, not over the whole
sequence: with a 49k vocabulary the full logits would cost as much as the LLM body.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

IGNORE = -100


class VisualLM:
    """StormConnector + token reducer + the summarizer's LLM. Not an nn.Module: the caller
    decides which parts train (`connector` is the module the optimizer owns)."""

    def __init__(self, connector, reducer, summarizer, chunk_frames: int, autocast: bool = False, fps: float = 1.0):
        self.connector, self.reducer, self.llm = connector, reducer, summarizer
        self.chunk_frames, self.fps = chunk_frames, fps
        self.autocast = autocast
        self.device = summarizer.device
        self._prompt_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _autocast(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def visual(self, grids: list[torch.Tensor], project: bool = True) -> list[torch.Tensor]:
        """Per-sample SigLIP grids (T_i, g, g, C) -> per-sample visual tokens (n_i, H)
        (or, with project=False, the pooled tokens before the projector (n_i, D)).

        Clips of one length run as one batch; the recurrent state is carried chunk to chunk.
        """
        out: list[torch.Tensor | None] = [None] * len(grids)
        by_length: dict[tuple, list[int]] = {}
        for i, grid in enumerate(grids):
            by_length.setdefault(tuple(grid.shape), []).append(i)
        for idx in by_length.values():
            batch = torch.stack([grids[i] for i in idx]).to(self.device)  # (b, T, g, g, C)
            with self._autocast():
                tokens = (self.connector.visual_tokens if project else self.connector.pooled_tokens)(
                    batch, self.reducer, self.chunk_frames)
            for j, i in enumerate(idx):
                out[i] = tokens[j]
        return out

    def prompt(self, prompt: str, grid: torch.Tensor, n_visual: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, visual slot mask) of a sample's prompt: its pooled frames spanning the clip from 0 s, as
        ingest asks about a chunk (`Summarizer.visual_prompt`)."""
        n_frames = max(1, grid.shape[0] // self.reducer.frames_per_group)
        key = (prompt, n_frames, n_visual, grid.shape[0])
        if key not in self._prompt_cache:
            self._prompt_cache[key] = self.llm.visual_prompt(prompt, n_frames, n_visual // n_frames, 0.0,
                                                             grid.shape[0] / self.fps)
        return self._prompt_cache[key]

    def sequences(self, visual: list[torch.Tensor], prompts: list[str], answers: list[str], grids: list[torch.Tensor]):
        """Right-padded (inputs_embeds (B, L, H), attention_mask (B, L), labels (B, L))."""
        rows, labels = [], []
        for vis, prompt, answer, grid in zip(visual, prompts, answers, grids):
            ids, slots = self.prompt(prompt, grid, vis.shape[0])
            target = self.llm.answer_ids(answer)
            rows.append(torch.cat([self.llm.splice(ids, slots, vis), self.llm.embed(target)]))
            masked = torch.full((len(ids),), IGNORE, device=self.device)
            labels.append(torch.cat([masked, target]))
        length = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[1]
        inputs = rows[0].new_zeros(len(rows), length, hidden)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        label = torch.full((len(rows), length), IGNORE, dtype=torch.long, device=self.device)
        for i, (row, lab) in enumerate(zip(rows, labels)):
            inputs[i, : len(row)], mask[i, : len(row)], label[i, : len(lab)] = row, 1, lab
        return inputs, mask, label

    def token_logprobs(self, inputs, mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the labelled tokens: (values (n,), row of each (n,)).

        Runs the LLM body once, then its head only at positions that predict a label.
        """
        model = self.llm.model
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        head = model.get_output_embeddings()
        targets = labels[:, 1:]
        where = targets != IGNORE  # position p predicts token p+1
        with self._autocast():
            if decoder is not None and head is not None:
                hidden = decoder(inputs_embeds=inputs, attention_mask=mask).last_hidden_state  # (B, L, H)
                logits = head(hidden[:, :-1][where]).float()  # (n, vocab)
            else:  # a model whose head is not a plain projection: full logits
                logits = model(inputs_embeds=inputs, attention_mask=mask).logits[:, :-1][where].float()
        values = torch.log_softmax(logits, dim=-1).gather(1, targets[where][:, None])[:, 0]
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[where]
        return values, rows

    def loss(self, grids: list[torch.Tensor], prompts: list[str], answers: list[str]) -> torch.Tensor:
        """Mean cross-entropy over every answer token of the batch."""
        inputs, mask, labels = self.sequences(self.visual(grids), prompts, answers, grids)
        values, _ = self.token_logprobs(inputs, mask, labels)
        return -values.mean()

    @torch.no_grad()
    def option_scores(self, grid: torch.Tensor, prompt: str, options: list[str]) -> torch.Tensor:
        """Log-likelihood of each option as the answer (its tokens and end-of-turn): (n_options,)."""
        (vis,) = self.visual([grid])
        inputs, mask, labels = self.sequences([vis] * len(options), [prompt] * len(options), options,
                                              [grid] * len(options))
        values, rows = self.token_logprobs(inputs, mask, labels)
        return torch.zeros(len(options), device=values.device).index_add_(0, rows, values.float())


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF's causal-LM loss (shift by one, ignore -100): what `VisualLM.loss` must equal."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)
