"""Watch rules: what to look for in new segments, and where to say so.

    # configs/watch/door.yaml (or DATA/watch/door.yaml, written by `vidstorm watch add`)
    name: door
    query: a person at the door
    match: meaning          # meaning (caption embedding vs query, cosine >= min_score) | keyword (every word)
    streams: [cam1]         # empty: every stream
    min_score: 0.5
    cooldown: 60s           # matches within this of the rule's last alert on a stream merge into it
    levels: [chunk]         # chunk (segments) and/or window, stream (summaries)
    notify: ["webhook:https://hooks.example/door", "mqtt:vidstorm"]

A rule that cannot work fails when it is loaded, in one line naming the file and the field.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.names import JOB_NAME_MAX, is_name, rule
from pipeline.secrets import mask_secrets

MATCH = ("meaning", "keyword")
LEVELS = ("chunk", "window", "stream", "period")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
TOPIC_MAX = 200


@dataclass(frozen=True)
class Target:
    kind: str  # webhook | mqtt
    address: str  # the URL, or the topic prefix (alerts go to <prefix>/<stream>/<rule>)

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"

    @property
    def shown(self) -> str:
        """For people and logs: a URL's password and query values hidden."""
        return mask_url(str(self))


@dataclass
class WatchRule:
    name: str
    query: str
    notify: list = field(default_factory=list)  # "webhook:URL" | "mqtt:TOPIC"
    match: str = "meaning"
    streams: list = field(default_factory=list)
    min_score: float = 0.5
    cooldown: str = "0s"
    levels: list = field(default_factory=lambda: ["chunk"])
    path: str = ""  # the file it came from

    @property
    def cooldown_s(self) -> float:
        return parse_seconds(self.cooldown)

    @property
    def targets(self) -> list[Target]:
        return [parse_target(t) for t in self.notify]

    def applies_to(self, stream_id: str, level: str) -> bool:
        return level in self.levels and (not self.streams or stream_id in self.streams)

    def to_yaml(self) -> str:
        from omegaconf import OmegaConf

        data = {k: v for k, v in asdict(self).items() if k != "path"}
        return OmegaConf.to_yaml(OmegaConf.create(data))

    def shown(self) -> dict:
        """The rule for listings: target URLs masked."""
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        data["notify"] = [mask_url(t) for t in self.notify]
        return data


def parse_seconds(text) -> float:
    """'60s', '5m', '1h', '250ms', 30 -> seconds; ValueError names the bad text."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
        if not m:
            raise ValueError(f"{str(text)[:40]!r} is not a duration (e.g. 30s, 5m, 1h)")
        value = float(m.group(1)) * UNITS[m.group(2) or "s"]
    if value < 0 or value > 7 * 86400:
        raise ValueError(f"duration {text!r} must be between 0 and 7 days")
    return value


URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _mask_one(match) -> str:
    try:
        parts = urllib.parse.urlsplit(match.group(0))
    except ValueError:
        return "***"
    netloc = parts.netloc if "@" not in parts.netloc else "***@" + parts.netloc.rsplit("@", 1)[1]
    segments = parts.path.split("/")
    path = parts.path if len(segments) <= 2 else "/".join(segments[:2]) + "/***"  # /services/T/B/token
    out = f"{parts.scheme}://{netloc}{path}"
    if parts.query:
        out += "?" + "&".join(f"{q.split('=', 1)[0]}=***" if "=" in q else "***" for q in parts.query.split("&"))
    return out + ("#***" if parts.fragment else "")


def mask_url(text: str) -> str:
    """Text with every URL's credentials, query values, fragment and path past its first level hidden:
    webhook URLs carry tokens in all of those places (Slack and Discord in the path)."""
    return URL.sub(_mask_one, mask_secrets(str(text)))


def parse_target(text) -> Target:
    """'webhook:https://host/path' or 'mqtt:topic/prefix'; ValueError with one line otherwise."""
    text = str(text)
    kind, _, address = text.partition(":")
    if kind == "webhook":
        check_webhook_url(address)
    elif kind == "mqtt":
        check_topic(address)
    else:
        raise ValueError(f"notify target {mask_url(text)[:80]!r} must be webhook:URL or mqtt:TOPIC")
    return Target(kind, address)


def check_webhook_url(url: str) -> str:
    shown = mask_url(url)[:100]
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"webhook URL {shown!r} is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"webhook URL {shown!r} must start with http:// or https://")
    if any(ord(c) <= 32 or ord(c) >= 127 for c in url):
        raise ValueError(f"webhook URL {shown!r} holds spaces, control or non-ASCII characters: percent-encode them")
    host = parts.hostname or ""
    if not host or any(c.isspace() for c in url):
        raise ValueError(f"webhook URL {shown!r} has no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
                            host):
            raise ValueError(f"webhook URL {shown!r}: {host[:60]!r} is not a host name") from None
    if port == 0:
        raise ValueError(f"webhook URL {shown!r} has port 0")
    return url


def check_topic(topic: str) -> str:
    """An MQTT topic prefix we publish under: no wildcards, no empty levels, no control characters."""
    if not topic or len(topic) > TOPIC_MAX:
        raise ValueError(f"MQTT topic must be 1-{TOPIC_MAX} characters, got {len(topic)}")
    if any(c in topic for c in "+#") or any(ord(c) < 32 or ord(c) == 127 for c in topic):
        raise ValueError(f"MQTT topic {topic[:60]!r} may not hold the wildcards + or # or control characters")
    if topic.startswith("/") or topic.endswith("/") or "//" in topic or topic.startswith("$"):
        raise ValueError(f"MQTT topic {topic[:60]!r} has an empty level or starts with $")
    return topic


def parse_rule(data, origin: str) -> WatchRule:
    """A rule from a mapping (a YAML file's content); ConfigError names what is wrong."""

    def fail(msg):
        raise ConfigError(f"{origin}: {msg}")

    if not isinstance(data, dict):
        fail("a watch rule is a mapping with name, query, notify, ...")
    known = set(WatchRule.__dataclass_fields__) - {"path"}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        fail(f"unknown watch field '{unknown[0]}' (known: {', '.join(sorted(known))})")
    for required in ("name", "query", "notify"):
        if not data.get(required):
            fail(f"missing '{required}'")
    data = dict(data)
    for listed in ("notify", "streams", "levels"):
        value = data.get(listed, [] if listed != "levels" else ["chunk"])
        value = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
            fail(f"{listed} must be a string or a list of strings, got {str(value)[:60]!r}")
        data[listed] = [str(v) for v in value]
    for scalar in ("name", "query", "match", "cooldown", "min_score"):
        if isinstance(data.get(scalar), (dict, list)):
            fail(f"{scalar} must be a single value, not {type(data[scalar]).__name__}")
    r = WatchRule(**{**data, "path": origin})
    r.name, r.query, r.match, r.cooldown = str(r.name), str(r.query).strip(), str(r.match), str(r.cooldown)
    if not is_name(r.name, JOB_NAME_MAX):
        fail(f"name {r.name[:60]!r} is not allowed: use {rule(JOB_NAME_MAX)}")
    if not r.query or len(r.query) > 500:
        fail("query must be 1-500 characters")
    if r.match not in MATCH:
        fail(f"match must be one of {', '.join(MATCH)}, got {r.match!r}")
    if r.match == "keyword" and not keywords(r.query):
        fail(f"keyword query {r.query[:60]!r} has no words")
    try:
        r.min_score = float(r.min_score)
    except (TypeError, ValueError):
        fail(f"min_score must be a number in [-1, 1], got {r.min_score!r}")
    if not -1.0 <= r.min_score <= 1.0:
        fail(f"min_score must be in [-1, 1] (cosine similarity), got {r.min_score}")
    try:
        r.cooldown_s
    except ValueError as err:
        fail(f"cooldown: {err}")
    for stream in r.streams:
        if not is_name(stream):
            fail(f"stream id {stream[:60]!r} is not allowed: use {rule()}")
    bad = [lv for lv in r.levels if lv not in LEVELS]
    if bad or not r.levels:
        fail(f"levels must be some of {', '.join(LEVELS)}, got {r.levels}")
    for target in r.notify:
        try:
            parse_target(target)
        except ValueError as err:
            fail(str(err))
    return r


def keywords(query: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", query.lower())


def load_rule_file(path: str | Path) -> WatchRule:
    from pipeline.config import read_yaml_file

    return parse_rule(read_yaml_file(path), str(path))


def load_rules(folders: list[str | Path], on_error=None) -> dict[str, WatchRule]:
    """Every *.yaml rule in `folders` (missing folders are fine); a name defined twice is an error.
    `on_error(ConfigError)`: called for each bad file, which is skipped (else the first one raises)."""
    rules: dict[str, WatchRule] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.y*ml")):
            try:
                r = load_rule_file(path)
                if r.name in rules:
                    raise ConfigError(f"{path}: watch rule {r.name!r} is already defined in {rules[r.name].path}")
            except ConfigError as err:
                if on_error is None:
                    raise
                on_error(err)
                continue
            rules[r.name] = r
    return rules


def rule_folders(watch_dir: str, data_dir: str | Path) -> list[Path]:
    """Where rules live: the configured folder (configs/watch) and DATA/watch (`vidstorm watch add`)."""
    return [Path(watch_dir), Path(data_dir) / "watch"]
