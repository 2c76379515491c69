"""Matching new segments and summaries against watch rules, as they are stored.

An alert's id is a digest of (rule, stream, level, seq): a replayed chunk, a second writer or a
restarted ingest makes the same id, and the outbox keeps the first (exactly one alert per rule and
segment). Meaning: cosine of the caption's stored MiniLM embedding and the query's (both unit
vectors) >= the rule's min_score. Keyword: every word of the query is a word of the caption.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.watch.rules import WatchRule, keywords


@dataclass
class Alert:
    alert_id: str
    rule: str
    stream_id: str
    level: str  # chunk | window | stream | period
    seq: int  # chunk_seq for chunks, the summary's seq otherwise
    t_start: float
    t_end: float
    score: float
    caption: str
    query: str
    event_s: float  # the time cooldowns compare: wall clock (live sources, tagged files), else video time
    wall_clock: float | None = None
    created_at: float = 0.0
    targets: list = field(default_factory=list)  # "webhook:URL" | "mqtt:TOPIC"
    source: str = ""  # the segment's source (a file path or a live URL: no clip link for those)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text) -> "Alert":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("an alert is a JSON object")
        fields = set(cls.__dataclass_fields__)
        missing = sorted(fields - set(data) - {"wall_clock", "created_at", "targets", "source"})
        if missing:
            raise ValueError(f"alert without {missing[0]}")
        return cls(**{k: v for k, v in data.items() if k in fields})


def alert_id(rule: str, stream_id: str, level: str, seq: int) -> str:
    return hashlib.sha256(f"{rule}\0{stream_id}\0{level}\0{seq}".encode()).hexdigest()[:24]


def record_view(rec) -> tuple[str, int, str] | None:
    """(level, seq, text) of a Segment or Summary; None for anything else."""
    from pipeline.types import Segment, Summary

    if isinstance(rec, Segment):
        return rec.level or "chunk", int(rec.chunk_seq), rec.caption or ""
    if isinstance(rec, Summary):
        return rec.level, int(rec.seq), rec.text or ""
    return None


def keyword_hit(query: str, text: str) -> bool:
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    return all(w in words for w in keywords(query))


class Matcher:
    """Rules -> alerts for new records. `embed(texts) -> (n, d)` unit vectors (MiniLM), called once for
    the meaning rules' queries, and only if there are any."""

    def __init__(self, rules: dict[str, WatchRule], embed=None):
        self.rules = dict(rules)
        self._embed = embed
        self._queries: dict[str, np.ndarray] | None = None

    def _query_vectors(self) -> dict[str, np.ndarray]:
        if self._queries is None:
            meaning = [r for r in self.rules.values() if r.match == "meaning"]
            vectors = self._embed([r.query for r in meaning]) if meaning else np.zeros((0, 1), np.float32)
            self._queries = {r.name: np.asarray(v, np.float32) for r, v in zip(meaning, vectors)}
        return self._queries

    def score(self, rule: WatchRule, text: str, embedding) -> float | None:
        """The rule's score for one text, None when it does not match."""
        if rule.match == "keyword":
            return 1.0 if keyword_hit(rule.query, text) else None
        if embedding is None or not len(embedding):
            return None
        s = float(np.dot(self._query_vectors()[rule.name], np.asarray(embedding, np.float32)))
        return s if s >= rule.min_score else None

    def alerts(self, records) -> list[Alert]:
        out = []
        now = time.time()
        for rec in records:
            view = record_view(rec)
            if view is None:
                continue
            level, seq, text = view
            for r in self.rules.values():
                if not r.applies_to(rec.stream_id, level):
                    continue
                s = self.score(r, text, getattr(rec, "text_embedding", None))
                if s is None:
                    continue
                wall = getattr(rec, "wall_clock", None)
                out.append(Alert(
                    alert_id=alert_id(r.name, rec.stream_id, level, seq), rule=r.name, stream_id=rec.stream_id,
                    level=level, seq=seq, t_start=float(rec.t_start), t_end=float(rec.t_end), score=round(s, 4),
                    caption=text, query=r.query, event_s=float(wall if wall is not None else rec.t_start),
                    wall_clock=wall, created_at=now, targets=[str(t) for t in r.targets],
                    source=getattr(rec, "source", "") or ""))
        return out
