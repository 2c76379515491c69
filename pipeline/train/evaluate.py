"""`vidstorm eval`: multiple-choice questions answered by log-likelihood, scored per task.

Each option is scored as the answer to the sample's prompt (its tokens plus end-of-turn,
summed log-probabilities); the highest wins. Reversed-clip controls (a sample with
`control: reversed` and the `pair` id of its original) give a consistency figure: the
share of pairs whose two predictions are opposite directions, which a model that does
not see time cannot reach beyond chance.
"""

from __future__ import annotations

import torch

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def choose(scores: torch.Tensor, options: list[str]) -> str:
    """The option with the highest score (the first on a tie)."""
    return options[int(torch.argmax(scores))]


def summarize(records: list[dict]) -> dict:
    """records: {task, answer, predicted, id, pair, control} -> accuracy overall, per task, consistency."""
    per_task: dict[str, list[bool]] = {}
    for r in records:
        per_task.setdefault(r["task"], []).append(r["predicted"] == r["answer"])
    n = len(records)
    correct = sum(sum(v) for v in per_task.values())
    result = {
        "n": n,
        "accuracy": round(correct / n, 4) if n else 0.0,
        "per_task": {task: round(sum(v) / len(v), 4) for task, v in sorted(per_task.items())},
    }
    by_id = {r["id"]: r for r in records}
    pairs = [(by_id.get(r["pair"]), r) for r in records if r.get("control") == "reversed"]
    pairs = [(a, b) for a, b in pairs if a is not None]
    if pairs:
        flips = sum(OPPOSITE.get(a["predicted"]) == b["predicted"] for a, b in pairs)
        result["reversed_consistency"] = round(flips / len(pairs), 4)
        result["reversed_pairs"] = len(pairs)
    return result


def evaluate(vlm, cache, samples, log=None) -> dict:
    """Answer every multiple-choice sample; samples whose media cannot be read are counted as skipped."""
    records, skipped = [], 0
    for i, sample in enumerate(s for s in samples if s.is_choice):
        grid = cache.get(sample.media)
        if grid is None:
            skipped += 1
            continue
        scores = vlm.option_scores(grid, sample.prompt, sample.options)
        records.append({"task": sample.task, "answer": sample.answer, "predicted": choose(scores, sample.options),
                        "id": sample.id, "pair": sample.pair, "control": sample.control})
        if log and (i + 1) % 100 == 0:
            log(f"answered {i + 1} questions")
    result = summarize(records)
    result["skipped"] = skipped
    return result


def table(result: dict) -> str:
    """A per-task table for people (the JSON line after it is for scripts)."""
    lines = [f"{'task':<14}{'accuracy':>10}"]
    lines += [f"{task:<14}{acc:>10.3f}" for task, acc in result["per_task"].items()]
    lines.append(f"{'overall':<14}{result['accuracy']:>10.3f}   ({result['n']} questions, {result.get('skipped', 0)} skipped)")
    if "reversed_consistency" in result:
        lines.append(f"reversed-clip consistency {result['reversed_consistency']:.3f} over {result['reversed_pairs']} pairs")
    return "\n".join(lines)
