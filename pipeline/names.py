"""Names that become parts of paths or keys: stream ids, job names. Validated before use.

A name is 1-128 of letters, digits, '.', '_' and '-', starting with a letter or digit:
no '/', no '..' at the start, no NUL, no newline (the whole string must match, so a
trailing '\n' cannot slip past a '$' anchor), nothing a shell or a filesystem reads specially.
"""

from __future__ import annotations

import re

from pipeline.errors import VidstormError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class BadName(VidstormError, ValueError):
    """A stream id, job name or file name that is not allowed to touch a path."""


def check_name(value, what: str = "name") -> str:
    """`value` if it is a safe name, else BadName with one clear line."""
    if isinstance(value, str) and NAME.fullmatch(value):
        return value
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise BadName(f"{what} {shown} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
                  "starting with a letter or digit")
