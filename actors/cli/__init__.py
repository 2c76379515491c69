"""The `vidstorm` command line: main.py (the parser), a module per group of commands."""

from actors.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
