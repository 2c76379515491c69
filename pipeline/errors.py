"""Errors a user can hit. Each carries one line that says what is wrong and what to do."""


class VidstormError(Exception):
    """Base: the CLI prints `vidstorm: error: <message>` and exits non-zero, no traceback."""


class ConfigError(VidstormError):
    """A config file or override is unknown, mistyped or inconsistent."""


class WeightsError(VidstormError):
    """Model weights are missing or cannot be loaded."""


class CheckpointError(VidstormError):
    """A STORM checkpoint does not match the configured model."""
