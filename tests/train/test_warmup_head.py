"""The warm-up choice head's readouts (pipeline/train/warmup.py): pure logic on small tensors."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.warmup import ChoiceHead


def _binding_batch(n: int, generator: torch.Generator) -> tuple[list[torch.Tensor], list[str]]:
    """Two objects a sample, each a token: its colour (one-hot of 4) and, on one of them, an 'older' flag.
    The answer is the colour of the older one. The mean of the two tokens is the same whichever token
    carries the flag (red + old + blue = red + blue + old), so a readout of the mean cannot answer."""
    samples, answers = [], []
    for _ in range(n):
        a, b = torch.randperm(4, generator=generator)[:2].tolist()
        older = int(torch.randint(2, (1,), generator=generator))
        tokens = torch.zeros(2, 8)
        tokens[0, a], tokens[1, b] = 1.0, 1.0
        tokens[older, 4] = 1.0
        samples.append(tokens + 0.01 * torch.randn(2, 8, generator=generator))
        answers.append(str((a, b)[older]))
    return samples, answers


def _train(readout: str, steps: int = 300) -> float:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    options = ["0", "1", "2", "3"]
    head = ChoiceHead(8, options, linear=True, readout=readout)
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    for _ in range(steps):
        xs, ys = _binding_batch(32, g)
        loss = torch.stack([F.cross_entropy(head(x, options)[None], torch.tensor([options.index(y)]))
                            for x, y in zip(xs, ys)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    xs, ys = _binding_batch(200, torch.Generator().manual_seed(2))
    with torch.no_grad():
        return sum(options[int(head(x, options).argmax())] == y for x, y in zip(xs, ys)) / len(xs)


def test_attention_readout_binds_what_the_mean_cannot():
    """train.warmup_readout=attention: learned queries pick a token and read its colour; the mean readout
    (the default) stays near chance on the same task (it sees the same mean for both answers)."""
    mean, attention = _train("mean"), _train("attention")
    assert mean < 0.75, mean  # 4 colours: the best a mean readout can do is guess between the two present
    assert attention > 0.95, attention


def test_mean_readout_is_one_linear_on_the_mean_and_a_bad_readout_is_refused():
    head = ChoiceHead(8, ["a", "b"], linear=True)
    tokens = torch.randn(5, 8)
    torch.testing.assert_close(head.summary(tokens), head.token(tokens.mean(0)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="readout"):
        ChoiceHead(8, ["a"], readout="max")
