"""STORM's temporal encoder: downsample + Linear, then L pre-norm Mamba layers.

Tokens are scanned row-major inside a frame, then frame after frame, so a
(T, h, w) grid becomes one sequence of T*h*w tokens. A single image is a one-frame
video and the same module is a purely spatial scanner.

State is explicit and owned by the caller (one encoder serves many streams):
`forward(tokens, state) -> (out, new_state)`. The state holds, per layer, the
forward direction's conv_state and ssm_state, plus the stream position.

Modes:
  stream               forward direction only; state carried chunk to chunk.
                       Running in pieces equals one pass over the whole sequence.
  chunk_bidirectional  forward state carried; a backward mixer scans inside each chunk.
  offline              a whole file, as in the paper: forward and backward over the whole
                       source, layer by layer, each direction's state carried over all
                       chunks (in reverse for the backward one); equals one bidirectional
                       pass over the whole sequence. `OfflineScan` in offline.py runs it
                       chunk by chunk with activations spilled to disk past a set size;
                       `forward` on its own is that pass over what it is given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from pipeline.models.scan import SCAN_IMPLS, ScanFn, selective_scan_blocked

MODES = ("stream", "chunk_bidirectional", "offline")


class StateMismatch(ValueError):
    """A saved temporal state that another model (or geometry) wrote."""

STATE_FORMAT = "vidstorm.temporal_state.v1"


@dataclass
class MixerState:
    """Recurrent state of one Mamba mixer for a batch of B streams."""

    conv: torch.Tensor  # (B, D_inner, d_conv - 1): last inputs to the causal conv
    ssm: torch.Tensor  # (B, D_inner, N): selective-scan hidden state


@dataclass
class TemporalState:
    """Everything needed to continue a stream exactly where it stopped."""

    layers: list[MixerState]
    frames_seen: int = 0
    tokens_seen: int = 0
    meta: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """safetensors bytes: tensors + a JSON header. Never pickle."""
        tensors = {}
        for i, layer in enumerate(self.layers):
            tensors[f"layer{i}.conv"] = layer.conv.detach().float().cpu().contiguous()
            tensors[f"layer{i}.ssm"] = layer.ssm.detach().float().cpu().contiguous()
        header = {
            "format": STATE_FORMAT,
            "n_layers": str(len(self.layers)),
            "frames_seen": str(self.frames_seen),
            "tokens_seen": str(self.tokens_seen),
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        return st_save(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TemporalState":
        header = _safetensors_header(data)
        if header.get("format") != STATE_FORMAT:
            raise ValueError(f"not a vidstorm temporal state (format={header.get('format')!r})")
        tensors = st_load(data)
        n_layers = int(header["n_layers"])
        layers = [MixerState(tensors[f"layer{i}.conv"], tensors[f"layer{i}.ssm"]) for i in range(n_layers)]
        return cls(
            layers=layers,
            frames_seen=int(header["frames_seen"]),
            tokens_seen=int(header["tokens_seen"]),
            meta=json.loads(header["meta"]),
        )

    def to(self, device) -> "TemporalState":
        layers = [MixerState(s.conv.to(device), s.ssm.to(device)) for s in self.layers]
        return TemporalState(layers, self.frames_seen, self.tokens_seen, dict(self.meta))


def _safetensors_header(data: bytes) -> dict:
    if len(data) < 8:
        raise ValueError("temporal state is truncated")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("temporal state header is corrupt")
    try:
        return json.loads(data[8 : 8 + n]).get("__metadata__", {})
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError("temporal state header is not JSON") from err


class MambaMixer(nn.Module):
    """Mamba selective SSM block with explicit state.

    Parameter names and shapes equal transformers' `MambaMixer`, so
    `our_mixer.load_state_dict(hf_mixer.state_dict())` works.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        conv_bias: bool = True,
        bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._init_ssm(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min, dt_max, dt_init_floor):
        # S4D-real A, unit D, and dt bias = softplus^-1 of a log-uniform dt (Mamba's init).
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def zero_state(self, batch: int, device=None) -> MixerState:
        device = device or self.A_log.device
        return MixerState(
            conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device),
        )

    def forward(
        self, x: torch.Tensor, state: MixerState | None = None, scan: ScanFn = selective_scan_blocked
    ) -> tuple[torch.Tensor, MixerState]:
        """x: (B, L, d_model) -> out: (B, L, d_model), state after the last token."""
        batch, seq_len, _ = x.shape
        if state is None:
            state = self.zero_state(batch, x.device)

        # 1. gated projection
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2*D_inner, L)
        u, gate = xz.chunk(2, dim=1)  # (B, D_inner, L) each

        # 2. causal depthwise conv, continuing from the carried inputs
        conv_in = torch.cat([state.conv.to(u.dtype), u], dim=-1)  # (B, D_inner, K-1+L)
        new_conv = conv_in[:, :, conv_in.shape[-1] - (self.d_conv - 1) :].clone()  # not a view of conv_in
        u = F.silu(F.conv1d(conv_in, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))

        # 3. input-dependent dt, B, C
        dt, B, C = torch.split(self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (B, D_inner, L); bias added in the scan

        # 4. selective scan from the carried state
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))  # (D_inner, N)
        y, new_ssm = scan(
            u,
            dt,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=self.D,
            z=gate,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            initial_state=state.ssm,
        )

        # 5. output projection. The new state stays in the graph when grad is enabled, so a
        #    sequence split into chunks backpropagates through the carried state; detach it
        #    to truncate. Under no_grad / inference_mode it carries no graph.
        out = self.out_proj(y.transpose(1, 2))  # (B, L, d_model)
        return out, MixerState(conv=new_conv, ssm=new_ssm)


def center_frames(x: torch.Tensor, frame_tokens: int | None) -> torch.Tensor:
    """x (B, L, D), L whole frames of `frame_tokens` tokens -> each token minus its frame's mean token."""
    b, length, d = x.shape
    if not frame_tokens or length % frame_tokens:
        raise ValueError(f"frame centering needs whole frames: {length} tokens, {frame_tokens} a frame")
    frames = x.reshape(b, length // frame_tokens, frame_tokens, d)
    return (frames - frames.mean(dim=2, keepdim=True)).reshape(b, length, d)


class TemporalLayer(nn.Module):
    """Pre-norm residual: x = x + Mixer(LayerNorm(x)), bidirectional if asked.

    `center_frames` (the module in a VLM's LLM space): the mixers read each frame's tokens minus that
    frame's mean token, x + Mixer(LayerNorm(x - mean_frame(x))); the residual stream is untouched. A
    pretrained tower's tokens share a large per-frame component (what the whole image shows); the motion
    that direction needs is a small local difference under it. Measured on the toy image-VLM (README, "The
    toy model, measured"; a probe harness): a warm-up on the toy image-VLM's tokens stayed at chance to step 400
    without centring and read direction at 0.93 at step 125 with it."""

    def __init__(self, d_model: int, bidirectional: bool, center_frames: bool = False, **mixer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.center_frames = center_frames
        self.fwd = MambaMixer(d_model, **mixer_kwargs)
        self.bwd = MambaMixer(d_model, **mixer_kwargs) if bidirectional else None

    def mixer_input(self, x: torch.Tensor, frame_tokens: int | None = None) -> torch.Tensor:
        """x (B, L, D), L whole frames of `frame_tokens` tokens -> what the mixers read."""
        return self.norm(center_frames(x, frame_tokens) if self.center_frames else x)

    def forward(self, x, state: MixerState | None, scan: ScanFn, frame_tokens: int | None = None):
        """x: (B, L, D). The backward mixer starts fresh: it sees only what is given."""
        h = self.mixer_input(x, frame_tokens)
        out, new_state = self.fwd(h, state, scan)
        if self.bwd is None:
            return x + out, new_state
        out_bwd, _ = self.bwd(h.flip(1), None, scan)
        return self.combine(x, out, out_bwd.flip(1)), new_state

    @staticmethod
    def combine(x: torch.Tensor, out_fwd: torch.Tensor, out_bwd: torch.Tensor) -> torch.Tensor:
        """The residual over both directions (out_bwd already flipped back into token order)."""
        return x + 0.5 * (out_fwd + out_bwd)


def pixel_shuffle_down(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """(B, T, H, W, C) -> (B, T, ceil(H/f), ceil(W/f), f*f*C).

    An odd grid is padded by repeating its last row/column, so nothing is dropped.
    """
    b, t, h, w, c = x.shape
    pad_h, pad_w = (-h) % factor, (-w) % factor
    if pad_h or pad_w:
        x = F.pad(x.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w), (0, pad_w, 0, pad_h), mode="replicate")
        x = x.reshape(b, t, c, h + pad_h, w + pad_w).permute(0, 1, 3, 4, 2)
        h, w = h + pad_h, w + pad_w
    x = x.reshape(b, t, h // factor, factor, w // factor, factor, c)
    x = x.permute(0, 1, 2, 4, 3, 5, 6)  # (B, T, h', w', f, f, C)
    return x.reshape(b, t, h // factor, w // factor, factor * factor * c)


class TemporalEncoder(nn.Module):
    """Downsample (2x2 pixel shuffle) + Linear, then L Mamba layers, then a final norm.

    `in_llm_space=True` is the paper's connector on a pretrained VLM (models/vlm.py): the input is
    already in the LLM's embedding space (the VLM's own connector made it), so there is no projection
    and no final norm, and a fresh module is the identity (every mixer's output projection zero):
    `x + Mixer(Norm(x))` with Mixer = 0 leaves the VLM's tokens as they were. `center_frames`: the
    mixers read each frame centred (TemporalLayer; checkpoints written before it: not).

    `adapter_dim=k` (with in_llm_space): the Mamba layers run at width k between a Linear down from the
    LLM's space and a Linear back up, the whole a residual: x + Up(Norm(Layers(Down(x - mean_frame(x))))),
    Up zero at init, so a fresh module is still the identity. Measured on the toy model (configs/toy.yaml): k=128,
    ~0.5 s a warm-up step of 32 in `vidstorm train` (1.8 s at the LLM's width, 576).
    """

    def __init__(
        self,
        vision_dim: int,
        d_model: int = 576,
        n_layers: int = 4,
        mode: str = "chunk_bidirectional",
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        downsample: int = 2,
        scan_impl: str = "torch",
        in_llm_space: bool = False,
        adapter_dim: int = 0,
        center_frames: bool = False,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"temporal mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.downsample = downsample
        self.scan_impl = scan_impl
        # Per-channel standardisation of the frozen encoder's features, estimated once from
        # training data (`set_input_stats`): a frozen SigLIP's tokens carry large constant
        # offsets that otherwise drown the content and stall training. Identity until set.
        self.register_buffer("input_shift", torch.zeros(vision_dim))
        self.register_buffer("input_scale", torch.ones(vision_dim))
        self.in_llm_space = in_llm_space
        self.proj = None if in_llm_space else nn.Linear(downsample * downsample * vision_dim, d_model)
        self.adapter_dim = adapter_dim if in_llm_space else 0
        self.center_frames = center_frames and in_llm_space
        width = self.adapter_dim or d_model  # the Mamba layers' width
        self.down = nn.Linear(d_model, width) if self.adapter_dim else None
        self.up = nn.Linear(width, d_model) if self.adapter_dim else None
        self.layers = nn.ModuleList(
            TemporalLayer(width, mode != "stream", center_frames=self.center_frames and not self.adapter_dim,
                          d_state=d_state, d_conv=d_conv, expand=expand)
            for _ in range(n_layers)
        )
        self.norm_f = nn.Identity() if in_llm_space and not self.adapter_dim else nn.LayerNorm(width)
        if in_llm_space:
            self.zero_outputs()
        self._signature: str | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_signature", None))

    @property
    def bidirectional(self) -> bool:
        return self.mode != "stream"

    @property
    def device(self) -> torch.device:
        return self.input_shift.device  # a buffer every encoder has (even one with no layers)

    @torch.no_grad()
    def zero_outputs(self) -> None:
        """Every mixer's output projection to zero (with an adapter: its Up projection): each residual block,
        hence the module, is the identity. Gradients still reach those projections (d W = y^T dL), so
        training moves off it."""
        for projection in self.output_projections():
            projection.weight.zero_()
            if projection.bias is not None:
                projection.bias.zero_()
        self._signature = None

    def output_projections(self) -> list[nn.Linear]:
        """What `zero_outputs` zeroes: the adapter's Up projection, else every mixer's output projection."""
        if self.up is not None:
            return [self.up]
        return [m.out_proj for layer in self.layers for m in (layer.fwd, layer.bwd) if m is not None]

    @torch.no_grad()
    def set_input_stats(self, grids: torch.Tensor) -> None:
        """grids (..., C): the frozen encoder's tokens of some training clips -> shift and scale."""
        flat = grids.reshape(-1, grids.shape[-1]).float()
        self.input_shift.copy_(flat.mean(0))
        self.input_scale.copy_(flat.std(0).clamp_min(1e-4))
        self._signature = None

    def initial_state(self, batch: int = 1) -> TemporalState:
        return TemporalState([layer.fwd.zero_state(batch) for layer in self.layers], meta={"model": self.signature()})

    def signature(self) -> str:
        """Which model a state belongs to: mode, geometry and a digest of the weights (computed once;
        the weights do not change at inference). Stored in every state this encoder writes."""
        if self._signature is None:
            import hashlib

            centred = "|centred" if self.center_frames else ""  # uncentred: the signature states saved before had
            digest = hashlib.sha256(f"{self.mode}|{len(self.layers)}{centred}".encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(f"{name}{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._signature = digest.hexdigest()[:16]
        return self._signature

    def check_state(self, state: TemporalState, batch: int) -> None:
        """A carried state must come from this very model: never run fewer layers or mixed weights."""
        problem = None
        if len(state.layers) != len(self.layers):
            problem = f"it has {len(state.layers)} layers, the model {len(self.layers)}"
        else:
            for i, (layer, s) in enumerate(zip(self.layers, state.layers)):
                want = layer.fwd.zero_state(batch)
                if s.conv.shape != want.conv.shape or s.ssm.shape != want.ssm.shape:
                    problem = (f"layer {i} holds conv {tuple(s.conv.shape)} / ssm {tuple(s.ssm.shape)}, the model "
                               f"needs {tuple(want.conv.shape)} / {tuple(want.ssm.shape)}")
                    break
        if problem is None and state.meta.get("model", self.signature()) != self.signature():
            problem = f"it was written by model {state.meta['model']}, this is model {self.signature()}"
        if problem:
            raise StateMismatch(f"the carried temporal state does not fit this temporal encoder ({problem}); "
                                "start the stream afresh (delete its saved state) or use the model that wrote it")

    def forward(
        self, tokens: torch.Tensor, state: TemporalState | None = None
    ) -> tuple[torch.Tensor, TemporalState]:
        """tokens: (T, H, W, C) or (B, T, H, W, C) vision patch grid.

        Returns (out, new_state): out is (T, h, w, d_model) or (B, T, h, w, d_model) with
        h = ceil(H/2), w = ceil(W/2).
        """
        unbatched = tokens.dim() == 4
        x = tokens[None] if unbatched else tokens
        out, new_state = self.forward_projected(self.project(x), state)  # 1. downsample + Linear
        return (out[0] if unbatched else out), new_state

    def forward_projected(
        self, x: torch.Tensor, state: TemporalState | None = None
    ) -> tuple[torch.Tensor, TemporalState]:
        """`forward` after the projection: x (B, T, h, w, d_model) -> (B, T, h, w, d_model), new state.
        The distributed encoder stage projects each frame (a per-token map) and the temporal owner
        scans here, so the two halves equal one `forward`."""
        b, t, h, w, d = x.shape
        # 2. scan row-major within a frame, then frame to frame
        seq, new_state = self.forward_tokens(x.reshape(b, t * h * w, d), state, frame_tokens=h * w)
        new_state.frames_seen += t
        return seq.reshape(b, t, h, w, d), new_state

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, C) vision grid -> (B, T, h, w, d_model): standardise, 2x2 pixel shuffle, Linear."""
        if self.proj is None:
            raise ValueError("this temporal encoder reads the VLM connector's output: project with StormConnector")
        x = (tokens - self.input_shift) / self.input_scale
        return self.proj(pixel_shuffle_down(x, self.downsample))

    def forward_tokens(
        self, seq: torch.Tensor, state: TemporalState | None = None, frame_tokens: int | None = None
    ) -> tuple[torch.Tensor, TemporalState]:
        """The Mamba stack on an already projected, flattened sequence.

        seq: (B, L, d_model) -> (B, L, d_model) after the final norm. Any split of a
        sequence into pieces gives the same result as one pass in `stream` mode.
        """
        b, seq_len, _ = seq.shape
        residual = seq
        # A frozen module at the identity (its output projections zero: the VLM's connector aligning under
        # it) adds exactly 0 and passes the gradient through unchanged. Under autograd (training) it is
        # skipped: its forward and backward were ~1/3 of a connector step (README "The toy model, measured");
        # the state's layers are then not advanced, which no output of an identity can show. Without autograd
        # (ingest, eval) it runs as always, so a stored stream state is the module's true state.
        skip = torch.is_grad_enabled() and self.frozen_identity()
        if self.mode == "offline" or state is None:
            state = self.initial_state(b)
        else:
            self.check_state(state, b)
        meta = dict(state.meta, model=self.signature())
        if skip:
            return residual, TemporalState(state.layers, state.frames_seen, state.tokens_seen + seq_len, meta)
        if self.down is not None:
            seq = self.adapter_in(seq, frame_tokens)
        state = state.to(seq.device)
        scan = SCAN_IMPLS[self.scan_impl]
        new_layers = []
        for layer, layer_state in zip(self.layers, state.layers):
            seq, new_layer_state = layer(seq, layer_state, scan, frame_tokens)
            new_layers.append(new_layer_state)
        new_state = TemporalState(new_layers, state.frames_seen, state.tokens_seen + seq_len, meta)
        return self.adapter_out(residual, seq), new_state

    def frozen_identity(self) -> bool:
        """No trainable parameter, and the projections `zero_outputs` zeroes are all zeros (with no final
        norm after them): the output is the input exactly, and no gradient flows through the branch."""
        if any(p.requires_grad for p in self.parameters()):
            return False
        if self.up is None and not isinstance(self.norm_f, nn.Identity):
            return False
        return not any(o.weight.any() or (o.bias is not None and o.bias.any()) for o in self.output_projections())

    def adapter_in(self, x: torch.Tensor, frame_tokens: int | None) -> torch.Tensor:
        """LLM-space tokens (B, L, D) -> the adapter's Mamba layers' input (B, L, k)."""
        return self.down(center_frames(x, frame_tokens) if self.center_frames else x)

    def adapter_out(self, residual: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """The last layer's output -> the module's output (with an adapter: the residual + Up of it)."""
        out = self.norm_f(top)
        return out if self.up is None else residual + self.up(out)
