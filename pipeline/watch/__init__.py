"""Watch: rules matched against every new segment and summary as it is stored, alerts delivered
over webhooks and MQTT through a Redis outbox (README "Watch live cameras").

    rules.py    the rule files (configs/watch, DATA/watch) and their checks
    match.py    records -> alerts (meaning or keyword), the alert's id
    outbox.py   Redis: one alert per (rule, segment), cooldowns, the delivery queue
    notify.py   the notifier: webhooks (HMAC-signed), MQTT, retries, the alerts table
    table.py    reading the alerts table
"""

from __future__ import annotations

from pathlib import Path

from pipeline.watch.match import Alert, Matcher
from pipeline.watch.outbox import Outbox
from pipeline.watch.rules import WatchRule, load_rules, rule_folders

__all__ = ["Alert", "Watcher", "WatchRule", "watcher_for", "load_rules", "rule_folders"]


class Watcher:
    """Matches records as they are stored and puts their alerts in the outbox (idempotent)."""

    def __init__(self, rules: dict[str, WatchRule], outbox: Outbox, embed=None, log=print):
        self.rules, self.outbox, self.log = rules, outbox, log
        self.matcher = Matcher(rules, embed)
        self.counts = {"new": 0, "duplicate": 0, "merged": 0}

    def observe(self, records) -> list[Alert]:
        """The new alerts of `records` (a replay, or a match its cooldown merged, makes none)."""
        fired = []
        for alert in self.matcher.alerts(records):
            outcome = self.outbox.put(alert, self.rules[alert.rule].cooldown_s)
            self.counts[outcome] += 1
            if outcome == "new":
                fired.append(alert)
                self.log(f"alert: rule {alert.rule} matched {alert.stream_id} {alert.level} {alert.seq} "
                         f"({alert.score:.2f}): {alert.caption[:80]}")
        return fired


def lazy_embedder(text_model: str):
    """A MiniLM `embed(texts)` loaded on first use (torch is imported only then)."""
    holder = {}

    def embed(texts):
        if "model" not in holder:
            from pipeline.models.text_embed import TextEmbedder

            holder["model"] = TextEmbedder(text_model)
        return holder["model"].embed(list(texts))

    return embed


def watcher_for(cfg, data_dir: str | Path, r, log=print) -> Watcher | None:
    """The watcher of a data directory's rules, on Redis client `r`; None when there are no rules."""
    rules = load_rules(rule_folders(cfg.watch.dir, data_dir))
    if not rules:
        return None
    return Watcher(rules, Outbox(r, cfg.watch.prefix), lazy_embedder(cfg.store.text_model), log)
