"""Errors a user can hit. Each carries one line that says what is wrong and what to do."""

from contextlib import contextmanager


class VidstormError(Exception):
    """Base: the CLI prints `vidstorm: error: <message>` and exits non-zero, no traceback."""


class ConfigError(VidstormError):
    """A config file or override is unknown, mistyped or inconsistent."""


class WeightsError(VidstormError):
    """Model weights are missing or cannot be loaded."""


class CheckpointError(VidstormError):
    """A STORM checkpoint does not match the configured model."""


@contextmanager
def explain_load_errors(what: str, model_ref: str, hint: str):
    """Turn a loader's OSError/ValueError into one WeightsError line that says what to do."""
    try:
        yield
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise WeightsError(f"cannot load {what} from {model_ref!r} ({first}); {hint}") from None
