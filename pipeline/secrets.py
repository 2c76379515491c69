"""Secrets never reach a person or a log: URL passwords, tokens and passwords in text and in JSON."""

from __future__ import annotations


SECRET_KEYS = ("token", "password", "secret")


def mask_secrets(text: str) -> str:
    """Hide secrets in any text a person or a log will see: the password of every URL
    (redis://:secret@host -> redis://:***@host), `api.token=...` / `password=...` overrides,
    and `token:` lines of printed configs."""
    import re

    text = re.sub(r"(://[^:/@\s]*:)[^@\s]+@", r"\1***@", text)
    keys = "|".join(SECRET_KEYS)
    text = re.sub(rf"(?i)((?:^|[\s'\"\[,(])[\w.]*(?:{keys})=)(?!\*\*\*)[^\s'\",\])]+", r"\1***", text)
    return re.sub(rf"(?im)^(\s*[\w.-]*(?:{keys}):\s*)(?!''\s*$)(?!\"\"\s*$)\S.*$", r"\1'***'", text)


def mask_data(value):
    """mask_secrets over every string of a JSON-like value; a key named like a secret is hidden whole."""
    if isinstance(value, dict):
        return {k: ("***" if isinstance(k, str) and any(w in k.lower() for w in SECRET_KEYS) and v
                    else mask_data(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_data(v) for v in value]
    return mask_secrets(value) if isinstance(value, str) else value
