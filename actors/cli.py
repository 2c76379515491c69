"""The `vidstorm` command line. The composition root: it unpacks the config tree."""

from __future__ import annotations

import argparse
import sys

from pipeline import __version__
from pipeline.errors import VidstormError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML overrides (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides, e.g. decode.fps=2")


def cmd_config(args) -> int:
    from pipeline.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidstorm", description="Streaming video understanding with STORM.")
    parser.add_argument("--version", action="version", version=f"vidstorm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="print the resolved config (defaults < --config < key=value)")
    _add_config_args(config)
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VidstormError as err:
        print(f"vidstorm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidstorm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
