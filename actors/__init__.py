"""Thin wrappers that run pipeline objects as processes (Ray actors, queues) and the CLI."""
