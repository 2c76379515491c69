"""The synthetic QA set the training tests share (rendered once per session)."""

from __future__ import annotations

import pytest

from pipeline.train.synthrender import write_dataset

CHEAP = dict(size_range=(96, 112), fps_range=(10, 10), duration_range=(4.0, 4.5))


@pytest.fixture(scope="session")
def cheap_render():
    """Clip settings that render fast: small frames, one frame rate, ~4 s."""
    return CHEAP


@pytest.fixture(scope="session")
def qa_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("qa")
    write_dataset(out, 20, seed=3, **CHEAP)
    return out
