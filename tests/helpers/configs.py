"""The config helper the queue and stage tests share."""

import uuid


def queue_config(tiny_overrides, *extra):
    """configs/test.yaml on the tiny models (the `tiny_overrides` fixture), a queue prefix of this call's
    own (tests that share a Redis never see each other's keys), then `extra` overrides."""
    from pipeline.config import load_config

    return load_config(None, [*tiny_overrides, f"queue.prefix=t{uuid.uuid4().hex[:6]}", *extra])
