"""`vidstorm train` on Ray Train: the loop of pipeline/train/loop.py in each TorchTrainer worker.

gloo on CPU, nccl on GPU. Rank 0 saves checkpoints into train.out and reports them to
Ray; a worker that dies makes Ray restart the group (FailureConfig.max_failures times),
and every worker resumes from the last reported checkpoint. Gradients are averaged
with an explicit all-reduce after backward (the trainable parts are small; the frozen
LLM is never synchronised).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config import Config
from pipeline.errors import VidstormError


def storage_dir(out: str | Path) -> Path:
    """Ray's run storage (checkpoint copies, worker pid files) beside the checkpoint folder."""
    out = Path(out).resolve()
    return out.with_name(out.name + ".ray")


def _config_from(text: str) -> Config:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text)))


def _worker_loop(loop_config: dict) -> None:
    """Runs inside each Ray Train worker."""
    import tempfile

    import ray.train
    import torch
    import torch.distributed as dist

    from pipeline.train.loop import Worker, train

    cfg = _config_from(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // world))
    pids = storage_dir(cfg.train.out) / "workers"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank-{rank}.pid").write_text(str(os.getpid()))

    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure: every worker continues from the last report
        resume_from = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="vidstorm-resume-")))
    elif loop_config.get("resume"):
        resume_from = Path(cfg.train.out)

    def report(metrics: dict, folder: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    def all_reduce(tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    worker = Worker(rank, world, resume_from, report, all_reduce if world > 1 else None, device)
    train(cfg, worker, log=print)
    if resume_from is not None and resume_from != Path(cfg.train.out):
        shutil.rmtree(resume_from, ignore_errors=True)


def train_on_ray(cfg: Config, resume: bool = False, log=print) -> dict:
    """Fit with TorchTrainer; returns the last reported metrics."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from actors.runtime import init_ray, worker_env

    t = cfg.train
    started = False
    if not ray.is_initialized():
        init_ray(cfg, log_to_driver=True, runtime_env={"env_vars": worker_env(cfg)})
        started = True
    storage = storage_dir(t.out)
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": OmegaConf.to_yaml(OmegaConf.structured(cfg)), "resume": resume},
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu),
        run_config=RunConfig(
            name="train",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:
        raise VidstormError(f"training on Ray failed: {str(err).strip().splitlines()[-1][:300]}") from None
    finally:
        if started:
            ray.shutdown()
    log(f"trained on Ray: {t.num_workers} worker(s); checkpoint in {t.out}")
    return dict(result.metrics or {})

