"""What the commands share: config and data arguments, JSON output, spans, log lines."""

from __future__ import annotations

import argparse
import sys



def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML overrides (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides, e.g. decode.fps=2")


def _data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="vidstorm-data", metavar="DIR", help="where the store lives")


def _emit_json(rows, one_line: bool = False) -> None:
    """Rows for scripts (indented), or one JSON line (`one_line`: a result a script reads last)."""
    import json

    from pipeline.secrets import mask_data

    rows = mask_data(json.loads(json.dumps(rows, default=_json_default)))  # no secret leaves in JSON either
    if one_line:
        print(json.dumps(rows, sort_keys=True))
    else:
        print(json.dumps(rows, indent=1))


def _json_default(value):
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _span(row) -> str:
    from pipeline.progress import hms as _hms

    return f"{_hms(row['t_start'])}-{_hms(row['t_end'])}"


def _is_override(arg: str) -> bool:
    import os
    import re

    return re.match(r"^[A-Za-z_][\w.]*=", arg) is not None and not os.path.exists(arg)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
