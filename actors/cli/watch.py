"""`vidstorm watch add|list|show|remove|test|deliver` and `vidstorm alerts`."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import VidstormError

from actors.cli.common import _emit_json, _log


def _context(args):
    from pipeline.config import load_config
    from pipeline.watch.rules import load_rules, rule_folders

    cfg = load_config(args.config, args.overrides)
    folders = rule_folders(cfg.watch.dir, args.data)
    return cfg, load_rules(folders), folders


def cmd_watch(args) -> int:
    return {"add": _add, "list": _list, "show": _show, "remove": _remove, "test": _test,
            "deliver": _deliver}[args.watch_command](args)


def _add(args) -> int:
    from pipeline.names import JOB_NAME_MAX, check_name
    from pipeline.watch.rules import parse_rule

    check_name(args.name, "rule name", JOB_NAME_MAX)  # before it becomes a file name
    cfg, rules, _ = _context(args)
    target = Path(args.data) / "watch" / f"{args.name}.yaml"
    if args.name in rules and Path(rules[args.name].path) != target:
        raise VidstormError(f"rule {args.name!r} is already defined in {rules[args.name].path}")
    if target.exists() and not args.force:
        raise VidstormError(f"{target} exists: pass --force to replace it")
    data = {"name": args.name, "query": args.query, "match": "keyword" if args.keyword else "meaning",
            "streams": list(args.stream or []), "min_score": args.min_score, "cooldown": args.cooldown,
            "levels": list(args.level or ["chunk"]), "notify": list(args.notify or [])}
    rule = parse_rule(data, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    import os

    tmp = target.with_suffix(f".yaml.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # webhook URLs may carry tokens
    with os.fdopen(fd, "w") as f:
        f.write(rule.to_yaml())
    tmp.replace(target)
    print(f"watch rule {rule.name} written to {target}")
    return 0


def _list(args) -> int:
    _, rules, folders = _context(args)
    rows = [dict(r.shown(), path=r.path) for r in rules.values()]
    if args.json:
        _emit_json(rows)
        return 0
    if not rows:
        print(f"no watch rules in {' or '.join(map(str, folders))} (vidstorm watch add NAME --query ... --notify ...)")
    for r in rules.values():
        where = ",".join(r.streams) or "every stream"
        print(f"{r.name:<20} {r.match:<8} {r.query[:40]!r:<42} {where:<16} >= {r.min_score:.2f} cooldown {r.cooldown} "
              f"-> {', '.join(t.shown for t in r.targets)}")
    return 0


def _rule(rules, name):
    if name not in rules:
        raise VidstormError(f"unknown watch rule {name!r} (vidstorm watch list)")
    return rules[name]


def _show(args) -> int:
    from pipeline.watch.table import read_alerts

    _, rules, _ = _context(args)
    rule = _rule(rules, args.name)
    recent = read_alerts(Path(args.data) / "store", rule=rule.name, limit=args.limit)
    if args.json:
        _emit_json({"rule": dict(rule.shown(), path=rule.path), "alerts": recent})
        return 0
    print(f"# {rule.path}\n" + _masked_yaml(rule), end="")
    print(f"--- {len(recent)} recent alerts")
    _print_alerts(recent)
    return 0


def _masked_yaml(rule) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(rule.shown()))


def _remove(args) -> int:
    from pipeline.names import JOB_NAME_MAX, check_name

    check_name(args.name, "rule name", JOB_NAME_MAX)
    target = Path(args.data) / "watch" / f"{args.name}.yaml"
    if not target.is_file():
        _, rules, _ = _context(args)
        if args.name in rules:
            raise VidstormError(f"rule {args.name!r} comes from {rules[args.name].path}: remove or edit that file")
        raise VidstormError(f"unknown watch rule {args.name!r} (vidstorm watch list)")
    target.unlink()
    print(f"watch rule {args.name} removed ({target})")
    return 0


def _test(args) -> int:
    """The rule over what is stored: which segments would alert (no cooldown, nothing sent), and with
    --send one test alert to each target, to check the endpoints."""
    import time

    from pipeline.watch import lazy_embedder
    from pipeline.watch.match import Matcher

    cfg, rules, _ = _context(args)
    rule = _rule(rules, args.name)
    matcher = Matcher({rule.name: rule}, lazy_embedder(cfg.store.text_model))
    hits = matcher.alerts(_stored_records(Path(args.data) / "store", rule.streams))
    hits.sort(key=lambda a: -a.score)
    rows = [{"stream_id": a.stream_id, "level": a.level, "seq": a.seq, "t_start": a.t_start, "t_end": a.t_end,
             "score": a.score, "caption": a.caption} for a in hits[: args.limit]]
    if args.json and not args.send:
        _emit_json(rows)
        return 0
    print(f"{len(hits)} stored segments/summaries match rule {rule.name}" + (f"; the best {len(rows)}:" if rows else ""))
    for row in rows:
        print(f"  {row['stream_id']} {row['level']} {row['seq']} {row['t_start']:.1f}-{row['t_end']:.1f}s "
              f"score {row['score']:.3f}  {row['caption'][:90]}")
    if not args.send:
        return 0
    import json

    from pipeline.watch.notify import DeliveryError, Sender, webhook_secret

    sender = Sender(cfg.watch, webhook_secret(cfg.watch.webhook_secret, args.data))
    body = json.dumps({"type": "vidstorm.test", "rule": rule.name, "query": rule.query, "sent_at": time.time(),
                       "caption": "a test alert from `vidstorm watch test --send`"}).encode()
    failed = 0
    for target in rule.targets:
        try:
            sender.send(str(target), body, f"test-{int(time.time())}", "test", rule.name)
            print(f"  sent a test alert to {target.shown}")
        except DeliveryError as err:
            failed += 1
            print(f"  {err}")
    sender.close()
    return 1 if failed else 0


def _stored_records(store_root: Path, streams: list[str]):
    import numpy as np
    import pyarrow.dataset as ds

    from pipeline.store.schema import SCHEMAS
    from pipeline.types import Segment, Summary

    out = []
    for table, kind in (("segments", Segment), ("summaries", Summary)):
        files = sorted(str(p) for p in (store_root / table).rglob("part-*.parquet"))
        if not files:
            continue
        seq = "chunk_seq" if table == "segments" else "seq"
        text = "caption" if table == "segments" else "text"
        cols = ["stream_id", seq, "level", "t_start", "t_end", text, "text_embedding"]
        for row in ds.dataset(files, schema=SCHEMAS[table], format="parquet").to_table(columns=cols).to_pylist():
            if streams and row["stream_id"] not in streams:
                continue
            emb = np.asarray(row["text_embedding"] or [], np.float32)
            if table == "segments":
                out.append(Segment(row["stream_id"], row[seq], row["t_start"], row["t_end"], row[text], None, emb,
                                   0, "", level=row["level"] or "chunk"))
            else:
                out.append(Summary(row["stream_id"], row["level"], row[seq], row["t_start"], row["t_end"], row[text],
                                   emb, ""))
    return out


def _deliver(args) -> int:
    """Deliver what the outbox holds (alerts an ingest left pending), until it is empty or --wait passes."""
    from pipeline.queue import connect
    from pipeline.queue.server import EmbeddedRedis, redis_url_for
    from pipeline.store import Store
    from pipeline.watch.outbox import Outbox

    from actors.runtime.watch import watch_service

    cfg, _, _ = _context(args)
    url, server = redis_url_for(cfg, args.data), None
    if url is None:
        server = EmbeddedRedis(Path(args.data) / "redis", appendfsync=cfg.redis.appendfsync).start()
        url = server.url
    try:
        r = connect(url)
        before = Outbox(r, cfg.watch.prefix).pending()
        service = watch_service(cfg, args.data, r, Store(Path(args.data) / "store"), log=_log)
        service.start_notifier()
        left = service.close(drain_s=args.wait)
    finally:
        if server is not None:
            server.stop()
    print(f"{before - left} of {before} pending deliveries done" + (f"; {left} still pending" if left else ""))
    return 0 if not left else 1


def cmd_alerts(args) -> int:
    from pipeline.watch.table import read_alerts

    rows = read_alerts(Path(args.data) / "store", rule=args.rule, stream=args.stream, status=args.status,
                       limit=args.limit)
    if args.json:
        _emit_json(rows)
        return 0
    if not rows:
        print("no alerts")
    _print_alerts(rows)
    return 0


def _print_alerts(rows) -> None:
    import datetime as dt

    for row in rows:
        when = dt.datetime.fromtimestamp(row["created_at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        extra = f" ({row['error']})" if row.get("error") and row["status"] != "delivered" else ""
        merged = f" +{row['merged']} merged" if row.get("merged") else ""
        print(f"{when}  {row['rule']:<16} {row['stream_id']} {row['level']} {row['seq']} "
              f"{row['t_start']:.1f}-{row['t_end']:.1f}s  {row['score']:.2f}  {row['status']} x{row['attempts']}"
              f"{merged} -> {row['target']}{extra}\n    {row['caption'][:100]}")
