"""Scheduled jobs and the server: `vidstorm scheduler`, `jobs list|show|run|cancel|add`, `serve`."""

from __future__ import annotations

from pipeline.errors import VidstormError

from actors.cli.common import _emit_json, _log


def _jobs_context(args):
    from pipeline.config import load_config
    from pipeline.jobs.spec import load_specs, spec_folders

    cfg = load_config(args.config, args.overrides)
    folders = spec_folders(args.jobs or cfg.scheduler.jobs_dir, args.data)
    return cfg, load_specs(folders), folders


def _scheduler_parts(cfg, args, specs, cluster, reload_specs=None):
    from pathlib import Path

    from actors.runtime.scheduler import JobExecutor, Scheduler
    from pipeline.jobs.board import JobBoard
    from pipeline.queue import connect
    from pipeline.store import Store

    board = JobBoard(connect(cluster.redis_url), cfg.queue.prefix)
    executor = JobExecutor(args.data, args.config, args.overrides, cluster=None if args.local else cluster, log=_log)
    return board, Scheduler(specs, board, executor, Store(Path(args.data) / "store"), cfg.scheduler, log=_log,
                            reload_specs=reload_specs)


def cmd_scheduler(args) -> int:
    import threading

    from actors.runtime import Cluster
    from pipeline.secrets import mask_secrets
    from pipeline.jobs.windows import next_fire

    cfg, specs, folders = _jobs_context(args)
    if not specs:
        raise VidstormError(f"no job specs in {' or '.join(map(str, folders))}: write one (see configs/jobs/) "
                            "or register one with `vidstorm jobs add`")
    from pipeline.jobs.spec import load_specs

    with Cluster(cfg, args.data, log=_log, with_ray=not args.local, join=True) as cluster:
        board, scheduler = _scheduler_parts(cfg, args, specs, cluster, reload_specs=lambda: load_specs(folders))
        now = scheduler.clock()
        for spec in specs.values():
            _log(f"{spec.name}: {spec.kind} at '{spec.schedule}' {spec.timezone}; next {next_fire(spec, now):%Y-%m-%d %H:%M} UTC")
        _log(f"vidstorm scheduler {scheduler.owner}: {len(specs)} jobs, board in {mask_secrets(cluster.redis_url)}, "
             f"runs {'in this process' if args.local else 'on Ray'}; Ctrl-C stops")
        if args.once:
            scheduler.tick()
            return 0
        scheduler.serve(threading.Event())
    return 0


def cmd_jobs(args) -> int:
    return {"list": _jobs_list, "show": _jobs_show, "run": _jobs_run, "cancel": _jobs_cancel,
            "add": _jobs_add}[args.jobs_command](args)


def _runs(args, name=None) -> list[dict]:
    """Runs of named jobs (a run's own row has job_id == run_id), newest first."""
    from pathlib import Path

    from pipeline.store.query import StoreQuery

    query = StoreQuery(Path(args.data) / "store", tables=("jobs",))
    return [r for r in query.jobs(name=name) if r["job_name"] and r["job_id"] == r["run_id"]]


def _when(value) -> str:
    return value.astimezone(__import__("datetime").timezone.utc).strftime("%Y-%m-%d %H:%M") if value else "-"


def _jobs_list(args) -> int:
    from actors.runtime.scheduler import utc_now
    from pipeline.jobs.windows import next_fire

    _, specs, folders = _jobs_context(args)
    if not specs:
        print(f"no jobs defined (looked in {', '.join(map(str, folders))})")
        return 0
    last = {}
    for run in _runs(args):  # newest first: keep each job's first
        last.setdefault(run["job_name"], run)
    if args.json:
        _emit_json([{**s.__dict__, "next_run": next_fire(s, utc_now()), "last_run": last.get(n)}
                    for n, s in specs.items()])
        return 0
    print(f"{'job':24s} {'kind':7s} {'schedule':16s} {'time zone':16s} {'next run (UTC)':17s} last run")
    for name, spec in specs.items():
        run = last.get(name)
        seen = f"{run['run_id']} {run['status']}" if run else "never"
        print(f"{name[:24]:24s} {spec.kind:7s} {spec.schedule:16s} {spec.timezone[:16]:16s} "
              f"{next_fire(spec, utc_now()):%Y-%m-%d %H:%M}  {seen}")
    return 0


def _jobs_show(args) -> int:
    _, specs, _ = _jobs_context(args)
    spec = _spec(specs, args.name)
    runs = _runs(args, args.name)[: args.limit]
    if args.json:
        _emit_json({"spec": spec.__dict__, "runs": runs})
        return 0
    from pipeline.secrets import mask_secrets

    print(f"# {spec.path}\n{mask_secrets(spec.to_yaml())}", end="")
    print(f"runs ({len(runs)} newest):" if runs else "no runs yet")
    for r in runs:
        print(f"  {r['run_id']:36s} {r['trigger'] or '':8s} {r['status']:9s} attempt {r['attempts'] or 0}  "
              f"started {_when(r['started_at'])}  {r['detail'] or ''}{('  ' + r['error']) if r['error'] else ''}")
    return 0


def _spec(specs, name):
    from pipeline.names import JOB_NAME_MAX, check_name

    check_name(name, "job name", JOB_NAME_MAX)
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise VidstormError(f"no job named {name!r} (jobs: {known})")
    return specs[name]


def _jobs_run(args) -> int:
    from actors.runtime import Cluster
    from actors.runtime.scheduler import utc_now

    cfg, specs, _ = _jobs_context(args)
    spec = _spec(specs, args.name)
    with Cluster(cfg, args.data, log=_log, with_ray=not args.local, join=True) as cluster:
        board, scheduler = _scheduler_parts(cfg, args, {spec.name: spec}, cluster)
        rid = board.request(spec.name, utc_now())
        row = scheduler.run_pending(rid)
    if row is None:
        print(f"{rid}: taken by a running scheduler; follow it with `vidstorm jobs show {spec.name}`")
        return 0
    return 0 if row["status"] == "done" else 1  # the scheduler's log said how it went


def _jobs_cancel(args) -> int:
    import time
    from pathlib import Path

    from actors.runtime.scheduler import board_for
    from pipeline.config import load_config
    from pipeline.store import Store

    cfg = load_config(args.config, args.overrides)
    board = board_for(cfg, args.data)
    if board is None:
        raise VidstormError("no scheduler is running for this data directory (its Redis holds the runs)")
    result = board.cancel(args.run)
    if result == "unknown":
        raise VidstormError(f"no run {args.run!r} (run ids look like NAME@20261121T020000Z)")
    info = board.info(args.run)
    if result == "cancelled" and info.get("owner") is None:  # it never started: record it here
        import datetime as dt

        from pipeline.jobs.runs import run_row

        now = time.time()
        Store(Path(args.data) / "store").write_job(run_row(
            args.run, info.get("job"), None, dt.datetime.fromisoformat(info["window"]), info.get("trigger"), 0,
            "cancelled", now, now, error="cancelled before it started"))
    print({"cancelling": f"{args.run}: cancelling (its scheduler stops it at the next chunk or stream)",
           "cancelled": f"{args.run}: cancelled"}.get(result, f"{args.run}: already {result}"))
    return 0


def _jobs_add(args) -> int:
    from pathlib import Path

    from pipeline.jobs.spec import parse_spec
    from pipeline.names import JOB_NAME_MAX, check_name

    check_name(args.name, "job name", JOB_NAME_MAX)  # before it becomes a file name
    target = Path(args.data) / "jobs" / f"{args.name}.yaml"
    if target.exists() and not args.force:
        raise VidstormError(f"{target} exists: pass --force to replace it")
    sources = [{"path": s, "glob": args.glob} if args.glob else s for s in args.source]
    data = {"name": args.name, "kind": args.kind, "schedule": args.cron, "timezone": args.tz,
            "sources": sources, "overrides": list(args.overrides), "catch_up": args.catch_up,
            "period": args.period, "streams": list(args.stream or [])}
    spec = parse_spec(data, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(spec.to_yaml())
    print(f"job {spec.name} written to {target}")
    return 0


def cmd_serve(args) -> int:
    from actors.server.serve import serve

    return serve(args)
