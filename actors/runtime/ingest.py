"""`vidstorm ingest` through Ray: the stage actors, the jobs, and the supervisor that keeps them going.

Actors restart when they die (max_restarts=-1); the supervisor sees the failed
call and calls it again on the restarted actor. With workers.scheduling=spread each
actor is pinned to a node; one whose node dies cannot come back there, so the
supervisor replaces it, unpinned. What a dead actor held is reclaimed from Redis,
and the temporal owner resumes from its checkpoint.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config, fingerprint
from pipeline.decode import Source
from pipeline.queue import connect, retrying
from pipeline.queue.keys import Keys

from actors.runtime.decoder import DecoderStage
from actors.runtime.encoder import EncoderStage
from actors.runtime.stage import configure_threads, ingest_progress, store_root
from actors.runtime.summarizer import SummarizerStage
from actors.runtime.temporal import TemporalStage
from actors.runtime.writer import WriterStage
from actors.runtime.cluster import ACTOR_OPTIONS, Cluster, worker_env


@dataclass
class Supervised:
    """A long call on an actor that is made again whenever the actor dies."""

    actor: object
    method: str
    args: tuple = ()
    ref: object = None
    restarts: int = 0
    failed_at: float = float("-inf")  # monotonic time of the last call that failed on a dead actor
    result: object = None
    finished: bool = False

    def launch(self):
        self.ref = getattr(self.actor, self.method).remote(*self.args)


def _here() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def spread_nodes(log=print, timeout: float = 30.0) -> list[str]:
    """The alive nodes, in a fixed order, that this driver can place actors on now.

    A node joins the cluster (GCS) seconds before the driver's raylet, which places our actors,
    hears of it; until then a soft node affinity to it quietly falls back to the head. So each
    node first runs a tiny task pinned to it (hard affinity: it waits until the raylet knows the
    node). A node that does not answer within `timeout` is left out, with a line.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    probe = ray.remote(num_cpus=0, max_retries=0)(_here)
    refs = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            for node in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    answered = set()
    for node, ref in refs.items():
        if ref in ready:
            try:
                answered.add(ray.get(ref))
            except Exception:  # the node died meanwhile
                pass
    for node, ref in refs.items():
        if node not in answered:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
            log(f"workers.scheduling=spread: node {node[:12]} did not take a task in {timeout:.0f} s; "
                "placing stages on the others")
    return [node for node in nodes if node in answered]


@dataclass
class Pipeline:
    actors: dict = field(default_factory=dict)  # name -> handle
    loops: list = field(default_factory=list)  # Supervised run() calls
    decoders: list = field(default_factory=list)


class DistributedIngest:
    """`vidstorm ingest` through Ray actors and Redis Streams."""

    def __init__(self, cluster: Cluster, cfg: Config, log=print):
        self.cluster, self.cfg, self.log = cluster, cfg, log
        self.keys = Keys(cfg.queue.prefix)
        self.r = connect(cluster.redis_url)
        self.data_dir = str(cluster.data_dir)
        self.pipeline: Pipeline | None = None
        self._spread: list[str] = []  # node IDs for workers.scheduling=spread
        self._spread_next = 0
        self._made: dict[str, tuple] = {}  # actor name -> how it was made (to replace it)
        self._nodes_checked = float("-inf")

    # --- actors ---

    def _actor(self, cls, name: str, *args, gpus: float = 0.0, concurrency: int = 1, pin: bool = True,
               incarnation: int = 0):
        import ray

        ray_name = name if not incarnation else f"{name}~{incarnation}"
        options = dict(ACTOR_OPTIONS, name=ray_name, namespace=self.cfg.ray.namespace, get_if_exists=False)
        if gpus:
            options["num_gpus"] = gpus
        if concurrency > 1:
            options["max_concurrency"] = concurrency
        node = None
        if self._spread and gpus:
            options["scheduling_strategy"] = "SPREAD"  # among the nodes that have the GPU share it asks for
        elif self._spread and pin:
            # the next alive node in turn. Hard affinity: Ray's soft affinity places actors where it
            # likes (measured: 3 of 5 on the node asked for). An actor pinned to a node that dies
            # cannot come back there: the supervisor replaces it, unpinned (_replace_lost).
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = self._spread[self._spread_next % len(self._spread)]
            self._spread_next += 1
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        options["runtime_env"] = {"env_vars": worker_env(self.cfg)}
        handle = ray.remote(**options)(cls).remote(self.cfg, self.cluster.redis_url, name, *args)
        self._made[name] = (cls, args, gpus, concurrency, node, incarnation)
        return handle

    def _replace_lost(self) -> None:
        """Replace each pinned actor whose node has died, unpinned, and make its calls again there."""
        import ray

        pinned = {name: made for name, made in self._made.items() if made[4] is not None}
        if not pinned or time.monotonic() - self._nodes_checked < 1.0:
            return
        self._nodes_checked = time.monotonic()
        try:
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        except Exception:  # the GCS is briefly unreachable: look again next time
            return
        self._spread = [n for n in self._spread if n in alive]  # decoders added later go to live nodes only
        p = self.pipeline
        for name, (cls, args, gpus, concurrency, node, incarnation) in pinned.items():
            if node in alive:
                continue
            old = p.actors[name]
            try:
                ray.kill(old, no_restart=True)
            except Exception:
                pass
            new = self._actor(cls, name, *args, gpus=gpus, concurrency=concurrency, pin=False,
                              incarnation=incarnation + 1)
            p.actors[name] = new
            p.decoders = [new if d is old else d for d in p.decoders]
            for loop in p.loops:
                if loop.actor is old and not loop.finished:
                    loop.actor = new
                    loop.restarts += 1
                    loop.failed_at = time.monotonic()
                    self.log(f"{loop.method} on a restarted actor (restart {loop.restarts}; its node is gone)")
                    loop.launch()

    def start_actors(self, streams: int | None = None) -> Pipeline:
        from pipeline.models.siglip import vision_geometry

        import ray

        w, prefix = self.cfg.workers, self.cfg.queue.prefix
        image_size, _ = vision_geometry(self.cfg.encoder.model)  # fail here, once, on a bad model path
        gpus = actor_gpus(w, ray.cluster_resources().get("GPU", 0) > 0)
        # spread = round-robin over the nodes the cluster has now, in a fixed order. (Ray's own SPREAD
        # reads the driver's raylet's view of the cluster, which learns of a new node seconds after
        # the cluster does: every actor could land on the head.)
        self._spread = spread_nodes(self.log) if w.scheduling == "spread" else []
        self._spread_next, self._made = 0, {}
        encoder_gpus, summarizer_gpus = gpus["encoder"], gpus["summarizer"]
        pad = self.cfg.pooling.frames_per_group
        p = Pipeline()
        p.actors[f"{prefix}-writer"] = self._actor(WriterActor, f"{prefix}-writer", store_root(self.data_dir))
        for i in range(w.summarizers):
            p.actors[f"{prefix}-summarizer-{i}"] = self._actor(SummarizerActor, f"{prefix}-summarizer-{i}",
                                                               gpus=summarizer_gpus)
        for i in range(w.temporal):
            p.actors[f"{prefix}-temporal-{i}"] = self._actor(TemporalActor, f"{prefix}-temporal-{i}", i,
                                                             self.data_dir, gpus=gpus["temporal"])
        for i in range(w.encoders):
            p.actors[f"{prefix}-encoder-{i}"] = self._actor(EncoderActor, f"{prefix}-encoder-{i}",
                                                            gpus=encoder_gpus)
        for name, actor in p.actors.items():
            p.loops.append(Supervised(actor, "run"))
        self._decoder_args = (image_size, pad)
        self.pipeline = p
        self._add_decoders(w.decoders if streams is None else streams)
        return p

    def _add_decoders(self, streams: int) -> None:
        """Decoders for `streams` concurrent streams, up to workers.decoders: a command with one file starts
        one (each is a process to start), a later run with more streams adds the rest."""
        w, p, prefix = self.cfg.workers, self.pipeline, self.cfg.queue.prefix
        for i in range(len(p.decoders), min(w.decoders, max(1, streams))):
            p.decoders.append(self._actor(DecoderActor, f"{prefix}-decoder-{i}", *self._decoder_args,
                                          concurrency=w.streams_per_decoder))
            p.actors[f"{prefix}-decoder-{i}"] = p.decoders[-1]

    # --- jobs ---

    def _prepare(self, sources: list[Source]) -> list[dict]:
        from dataclasses import asdict

        from pipeline.ingest import Ingested
        from pipeline.jobs.result import JobResult

        config_fp, jobs = fingerprint(self.cfg), []
        for source in Ingested(Path(self.data_dir) / "store").pending(sources, config_fp, self.log):
            job = JobResult(uuid.uuid4().hex[:12], source.uri, source.stream_id,
                            content_fingerprint=source.content_fp, config_fingerprint=config_fp)
            jobs.append({**asdict(job), "live": source.live})  # the message decoders and the writer carry
        return jobs

    def _reset(self, jobs: list[dict], resume: bool = False) -> list[str]:
        """A fresh start for every stream of this run, and no stop flag.

        resume=True keeps what an interrupted run of the same streams left in Redis (decoder
        position, temporal state, queued messages): those streams continue where they stopped.
        Returns the streams resumed.
        """
        resumed = [j["stream_id"] for j in jobs if resume and not j["live"]
                   and self.r.hget(self.keys.decoded(j["stream_id"]), "next_chunk_seq") is not None]
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.stop)
        now = time.time()
        for job in jobs:
            sid = job["stream_id"]
            if sid in resumed:  # progress of this run counts from where the stored chunks end
                at = self.r.hget(self.keys.ingest(sid), "done_s")
                pipe.hset(self.keys.ingest(sid), mapping={"source": job["source"], "started_at": now,
                                                          "position_at_start": float(at or 0.0)})
                pipe.sadd(self.keys.active, sid)
                continue
            pipe.delete(*self.keys.stream_keys(sid))
            pipe.hdel(self.keys.done, sid)
            pipe.hdel(self.keys.ends, sid)
            for level_seq in self.r.smembers(self.keys.rolled):
                if level_seq.decode().startswith(f"{sid}|"):
                    pipe.srem(self.keys.rolled, level_seq)
            owner = zlib.crc32(sid.encode()) % self.cfg.workers.temporal  # stable across processes
            for i in range(self.cfg.workers.temporal):
                pipe.srem(self.keys.owner(i), sid)
            pipe.sadd(self.keys.owner(owner), sid)
            pipe.hset(self.keys.ingest(sid), mapping={"source": job["source"], "started_at": now,
                                                      "position_at_start": 0.0})
            pipe.sadd(self.keys.active, sid)
        pipe.execute()
        for sid in resumed:
            at = self.r.hget(self.keys.decoded(sid), "next_chunk_seq").decode()
            self.log(f"{sid}: resuming at chunk {at}")
        return resumed

    def run(self, sources: list[Source], on_start=None, poll: float = 0.3, tags: dict | None = None,
            should_stop=None, resume: bool = False, on_progress=None) -> list[dict]:
        """Ingest sources as concurrent streams; returns the final job rows.

        `tags` (job_name, run_id) mark the jobs as part of a job run; `should_stop()` true ends
        the run early with the unfinished streams recorded as cancelled; `resume` continues
        streams an interrupted run (same queue prefix) left half done; `on_progress(rows)` gets
        ingest_progress's rows about once a second.
        """
        from pipeline.jobs.result import JobResult
        from pipeline.store import Store

        jobs = [{**job, **(tags or {})} for job in self._prepare(sources)]
        if not jobs:
            return []
        store = Store(Path(self.data_dir) / "store")
        for job in jobs:
            store.write_job(JobResult.from_job(job).row())  # status running
        self._reset(jobs, resume)
        p = self.pipeline or self.start_actors(len(jobs))
        self._add_decoders(len(jobs))
        for loop in p.loops:
            if loop.ref is None:  # loops already running from an earlier run() keep running
                loop.launch()
        for i, job in enumerate(jobs):
            call = Supervised(p.decoders[i % len(p.decoders)], "decode", (job,))
            call.launch()
            p.loops.append(call)
        if on_start:
            on_start(self)
        rows = self._supervise(jobs, poll, should_stop, on_progress)  # the actors stay up until shutdown()
        self._drain_alerts()
        return rows

    def _drain_alerts(self) -> None:
        """Give the writer's notifier up to watch.drain_s to deliver this run's alerts (the rest wait in Redis)."""
        from pipeline.watch.outbox import Outbox

        deadline = time.monotonic() + self.cfg.watch.drain_s
        outbox = Outbox(self.r, self.cfg.watch.prefix)
        try:
            while outbox.pending() and time.monotonic() < deadline:
                time.sleep(0.1)
        except Exception as err:  # the ingest is done either way
            self.log(f"watch: could not wait for the alerts to go out: {str(err)[:160]}")

    def _supervise(self, jobs: list[dict], poll: float, should_stop=None, on_progress=None) -> list[dict]:
        import ray
        import redis

        p = self.pipeline
        streams = {j["stream_id"] for j in jobs}
        last_work, last_change = None, time.monotonic()
        shown = 0.0
        while True:
            if on_progress and time.monotonic() - shown >= 1.0:
                shown = time.monotonic()
                try:
                    rows = ingest_progress(self.r, self.cfg.queue.prefix)
                except redis.RedisError:  # progress is a display: the checks below retry what matters
                    rows = None
                if rows is not None:
                    on_progress([row for row in rows if row["stream_id"] in streams])
            self._replace_lost()
            refs = {loop.ref: loop for loop in p.loops if not loop.finished}
            ready, _ = ray.wait(list(refs), timeout=poll, num_returns=len(refs)) if refs else ([], [])
            for ref in ready:
                loop = refs[ref]
                try:
                    loop.result, loop.finished = ray.get(ref), True
                except ray.exceptions.ActorUnschedulableError:  # pinned to a node that has died
                    self._nodes_checked = float("-inf")
                    before = loop.actor
                    self._replace_lost()
                    if loop.actor is before:  # not known dead yet: ask again (it fails again until it is)
                        if time.monotonic() - loop.failed_at >= 30:  # a line per outage, not per retry
                            loop.restarts += 1
                            self.log(f"{loop.method}: its actor cannot be placed; trying again")
                        loop.failed_at = time.monotonic()
                        time.sleep(0.5)
                        loop.launch()
                except ray.exceptions.RayActorError as err:  # died, or unavailable (restarting, node lost)
                    # An unavailable actor fails each new call within seconds until it is back: one
                    # line per outage, not one per call.
                    again = (isinstance(err, ray.exceptions.ActorUnavailableError)
                             and time.monotonic() - loop.failed_at < 30)
                    loop.failed_at = time.monotonic()
                    if not again:
                        loop.restarts += 1
                        self.log(f"{loop.method} on a restarted actor (restart {loop.restarts})")
                    loop.launch()
                except ray.exceptions.RayTaskError as err:  # a bug in a stage: say it, keep the others going
                    self.log(f"vidstorm: error: a {loop.method} call failed: {str(err).splitlines()[0]}")
                    loop.launch()
            done = retrying(lambda: self.r.hgetall(self.keys.done))
            rows = {k.decode(): json.loads(v) for k, v in done.items()}
            if streams <= set(rows):
                if on_progress:  # the finished streams once more, where they ended (no longer active)
                    try:
                        on_progress(ingest_progress(self.r, self.cfg.queue.prefix, streams=streams))
                    except redis.RedisError:
                        pass
                return [rows[j["stream_id"]] for j in jobs]
            if should_stop and should_stop():
                return self._end_unfinished(jobs, rows, "cancelled", "cancelled")
            work = retrying(lambda: self.r.hgetall(self.keys.progress))
            if work != last_work:
                last_work, last_change = work, time.monotonic()
            elif time.monotonic() - last_change > self.cfg.queue.stall_timeout_s:
                return self._fail_stalled(jobs, rows)

    def _fail_stalled(self, jobs: list[dict], rows: dict) -> list[dict]:
        """Nothing moved for queue.stall_timeout_s (e.g. a chunk was dead-lettered): say so, don't hang."""
        dead = self.r.xlen(self.keys.dead)
        reason = (f"stalled for {self.cfg.queue.stall_timeout_s:.0f}s with no progress "
                  f"({dead} message(s) in {self.keys.dead})")
        return self._end_unfinished(jobs, rows, "failed", reason)

    def _end_unfinished(self, jobs: list[dict], rows: dict, status: str, reason: str) -> list[dict]:
        """Record every stream of `jobs` that has no final row yet as `status`."""
        from pipeline.jobs.result import JobResult, stored_counts
        from pipeline.store import Store

        store = Store(Path(self.data_dir) / "store")
        for job in jobs:
            sid = job["stream_id"]
            if sid in rows:
                continue
            error = f"{job['source']}: {reason}"
            chunks = {r["chunk_seq"]: r for r in store.stream_rows("segments", sid, ["chunk_seq", "t_start", "t_end"])}
            summaries = [(r["level"], r["seq"]) for r in store.stream_rows("summaries", sid, ["level", "seq"])]
            counts = stored_counts(chunks, summaries, self.cfg.summary.window_seconds)
            row = JobResult.from_job(job, status=status, error=error, finished_at=time.time()).counted(counts).row()
            store.write_job(row)
            rows[job["stream_id"]] = row
        return [rows[j["stream_id"]] for j in jobs]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask every loop to stop, wait a little, then remove the actors."""
        import ray

        if self.pipeline is None:
            return
        retrying(lambda: self.r.set(self.keys.stop, "1"))
        refs = [loop.ref for loop in self.pipeline.loops if loop.ref is not None and not loop.finished]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for actor in self.pipeline.actors.values():
            ray.kill(actor, no_restart=True)
        self.pipeline = None


# Ray actor classes: the stages as they are, plus thread settings for a shared machine.
class _ActorMixin:
    runs_models = True

    def __init__(self, cfg, *args, **kwargs):
        if self.runs_models:
            configure_threads(cfg.workers.torch_threads)
        super().__init__(cfg, *args, **kwargs)


class DecoderActor(_ActorMixin, DecoderStage):
    runs_models = False


class EncoderActor(_ActorMixin, EncoderStage):
    pass


def actor_gpus(workers, has_gpus: bool) -> dict[str, float]:
    """GPUs each model actor reserves. Auto (-1): a whole GPU for SigLIP and the LLM, a quarter for the
    temporal owner; none without GPUs. An actor that reserves none never sees CUDA, so `auto` devices
    would never pick it."""
    auto = {"encoder": 1.0, "summarizer": 1.0, "temporal": 0.25}
    chosen = {"encoder": workers.gpus_per_encoder, "summarizer": workers.gpus_per_summarizer,
              "temporal": workers.gpus_per_temporal}
    return {k: (v if v >= 0 else auto[k] * has_gpus) for k, v in chosen.items()}


class TemporalActor(_ActorMixin, TemporalStage):
    pass


class SummarizerActor(_ActorMixin, SummarizerStage):
    pass


class WriterActor(_ActorMixin, WriterStage):
    runs_models = False
