"""Job specs: what a named job does, over which sources, on which schedule.

    # configs/jobs/cam1-nightly.yaml
    name: cam1-nightly
    kind: ingest                 # ingest | digest
    schedule: "0 2 * * *"        # cron, 5 fields
    timezone: Europe/Berlin
    sources:
      - {path: /srv/cams/cam1, glob: "**/*.mp4"}
    overrides: {temporal: {mode: chunk_bidirectional}, decode: {fps: 1}}

A spec that cannot work fails when it is loaded, in one line naming the file and the field.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.names import JOB_NAME_MAX, is_name, rule

KINDS = ("ingest", "digest")
CATCH_UP = ("all", "latest", "none")
PERIODS = ("day", "hour", "window")


@dataclass
class JobSpec:
    name: str
    kind: str
    schedule: str
    timezone: str = "UTC"
    # ingest: paths (files or folders), {path, glob} entries, or live URLs
    sources: list = field(default_factory=list)
    overrides: list = field(default_factory=list)  # key=value, applied over the base config
    # Windows missed while no scheduler ran: all (each once), latest (only the newest), none.
    catch_up: str = "all"
    max_catch_up: int = 31  # catch_up=all runs at most this many missed windows (the newest); older: skipped
    # digest: the period each run rolls up, ending at its window: the day or hour before it
    # (in `timezone`), or the whole interval since the previous cron time.
    period: str = "day"
    streams: list = field(default_factory=list)  # digest: only these streams (default: every stream)
    path: str = ""  # the file it came from

    def to_yaml(self) -> str:
        from omegaconf import OmegaConf

        data = {k: v for k, v in asdict(self).items() if k != "path"}
        return OmegaConf.to_yaml(OmegaConf.create(data))


def _flatten(tree, prefix: str = "") -> list[str]:
    """{temporal: {mode: offline}} -> ['temporal.mode=offline']."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def parse_spec(data: dict, origin: str) -> JobSpec:
    """A spec from a mapping (a YAML file's content); ConfigError names what is wrong."""
    from croniter import croniter

    def fail(msg):
        raise ConfigError(f"{origin}: {msg}")

    if not isinstance(data, dict):
        fail("a job spec is a mapping with name, kind, schedule, ...")
    known = set(JobSpec.__dataclass_fields__) - {"path"}
    unknown = sorted(set(data) - known)
    if unknown:
        fail(f"unknown job field '{unknown[0]}' (known: {', '.join(sorted(known))})")
    for required in ("name", "kind", "schedule"):
        if not data.get(required):
            fail(f"missing '{required}'")
    overrides = data.get("overrides") or []
    if isinstance(overrides, dict):
        overrides = _flatten(overrides)
    spec = JobSpec(**{**data, "overrides": [str(o) for o in overrides], "path": origin})
    spec.schedule, spec.name = str(spec.schedule), str(spec.name)
    if not is_name(spec.name, JOB_NAME_MAX):
        fail(f"name {spec.name[:60]!r} is not allowed: use {rule(JOB_NAME_MAX)}")
    if spec.kind not in KINDS:
        fail(f"kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if len(spec.schedule.split()) != 5 or not croniter.is_valid(spec.schedule):
        fail(f"schedule {spec.schedule!r} is not a 5-field cron expression (e.g. '0 2 * * *')")
    try:
        zoneinfo.ZoneInfo(str(spec.timezone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        fail(f"unknown time zone {spec.timezone!r} (e.g. UTC, Europe/Berlin)")
    if spec.catch_up not in CATCH_UP:
        fail(f"catch_up must be one of {', '.join(CATCH_UP)}, got {spec.catch_up!r}")
    if not isinstance(spec.max_catch_up, int) or spec.max_catch_up < 1:
        fail(f"max_catch_up must be a positive integer, got {spec.max_catch_up!r}")
    if spec.period not in PERIODS:
        fail(f"period must be one of {', '.join(PERIODS)}, got {spec.period!r}")
    if spec.kind == "ingest":
        if not spec.sources:
            fail("an ingest job needs sources (paths, {path, glob} entries or URLs)")
        for entry in spec.sources:
            if isinstance(entry, dict) and (set(entry) - {"path", "glob"} or "path" not in entry):
                fail(f"a source entry is a path, a URL, or {{path, glob}}; got {dict(entry)}")
    from pipeline.config import load_config

    try:  # overrides must name real config keys with good values
        load_config(None, spec.overrides)
    except ConfigError as err:
        fail(f"overrides: {str(err).split(': ', 1)[-1]}")
    return spec


def load_spec_file(path: str | Path) -> JobSpec:
    from pipeline.config import read_yaml_file

    return parse_spec(read_yaml_file(path), str(path))


def load_specs(folders: list[str | Path]) -> dict[str, JobSpec]:
    """Every *.yaml spec in `folders` (missing folders are fine); a name defined twice is an error."""
    specs: dict[str, JobSpec] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.y*ml")):
            spec = load_spec_file(path)
            if spec.name in specs:
                raise ConfigError(f"{path}: job {spec.name!r} is already defined in {specs[spec.name].path}")
            specs[spec.name] = spec
    return specs


def spec_folders(jobs_dir: str, data_dir: str | Path) -> list[Path]:
    """Where specs live: the configured folder (e.g. configs/jobs) and DATA/jobs (`vidstorm jobs add`)."""
    return [Path(jobs_dir), Path(data_dir) / "jobs"]
