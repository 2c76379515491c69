"""The distributed runtime: Redis + Ray (cluster.py), the stage actors and their supervisor (ingest.py),
one file per stage role (decoder, encoder, temporal, summarizer, writer; their base in stage.py), the
job scheduler (scheduler.py) and training on Ray Train (train.py)."""

from actors.runtime.cluster import ACTOR_OPTIONS, Cluster, check_ray_cluster, init_ray, worker_env
from actors.runtime.decoder import DecoderStage
from actors.runtime.encoder import EncoderStage
from actors.runtime.ingest import DistributedIngest, Pipeline, Supervised, actor_gpus, spread_nodes
from actors.runtime.stage import Stage, configure_threads, ingest_progress, store_root
from actors.runtime.summarizer import SummarizerStage
from actors.runtime.temporal import TemporalStage
from actors.runtime.writer import WriterStage

__all__ = ["ACTOR_OPTIONS", "Cluster", "DecoderStage", "DistributedIngest", "EncoderStage", "Pipeline", "Stage",
           "SummarizerStage", "Supervised", "TemporalStage", "WriterStage", "actor_gpus", "check_ray_cluster",
           "configure_threads", "init_ray", "ingest_progress", "spread_nodes", "store_root", "worker_env"]
