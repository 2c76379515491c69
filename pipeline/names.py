"""Names that become parts of paths or keys: stream ids, job names. Validated before use.

A name is 1-128 of letters, digits, '.', '_' and '-', starting with a letter or digit:
no '/', no '..' at the start, no NUL, no newline (the whole string must match, so a
trailing '\n' cannot slip past a '$' anchor), nothing a shell or a filesystem reads specially.
"""

from __future__ import annotations

import re

from pipeline.errors import VidstormError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_MAX = 128  # stream ids
JOB_NAME_MAX = 64  # job names (a spec file's name)


class BadName(VidstormError, ValueError):
    """A stream id, job name or file name that is not allowed to touch a path."""


def is_name(value, max_len: int = NAME_MAX) -> bool:
    return isinstance(value, str) and len(value) <= max_len and NAME.fullmatch(value) is not None


def rule(max_len: int = NAME_MAX) -> str:
    return f"1-{max_len} letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(value, what: str = "name", max_len: int = NAME_MAX) -> str:
    """`value` if it is a safe name, else BadName with one clear line."""
    if is_name(value, max_len):
        return value
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise BadName(f"{what} {shown} is not allowed: use {rule(max_len)}")
