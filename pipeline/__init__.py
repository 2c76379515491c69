"""vidstorm pipeline: the STORM path as plain logic. Imports neither Ray nor Redis."""

__version__ = "0.1.0"
