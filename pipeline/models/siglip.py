"""SigLIP image encoder: uint8 frames (T, H, W, 3) -> patch-token grid (T, h, w, C).

Wraps transformers' `SiglipVisionModel`, loaded with `from_pretrained` from a hub
id or a local folder. Pre-processing is plain torch (no torchvision): bilinear
resize to the checkpoint's image size, scale to [0, 1], normalise with the
checkpoint's mean/std.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import WeightsError, explain_load_errors

SIGLIP_HINT = "set encoder.model to a local folder or a hub id that is reachable"
SIGLIP_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # SigLIP's processors all use these

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return TORCH_DTYPES[name]


def _mean_std(model_ref: str) -> tuple[list[float], list[float]]:
    """The checkpoint's normalisation, from preprocessor_config.json when it has one."""
    path = Path(model_ref) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_ref, "preprocessor_config.json")
            path = Path(cached) if isinstance(cached, str) else path
        except Exception:
            pass
    if path.is_file():
        spec = json.loads(path.read_text())
        return spec.get("image_mean", SIGLIP_MEAN_STD[0]), spec.get("image_std", SIGLIP_MEAN_STD[1])
    return SIGLIP_MEAN_STD


class FrameEncoder:
    """uint8 frames -> a patch-token grid, batched. Subclasses set device, dtype, batch_size, image_size,
    grid, hidden_size, mean, std and define `features` (normalised pixels -> (T, g*g, C))."""

    @property
    def dtype_name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> normalised (T, 3, S, S) in the model dtype."""
        x = frames.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return ((x - self.mean) / self.std).to(self.dtype)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 frames (T, H, W, 3), or one image (H, W, 3) -> fp32 (T, h, w, C) on CPU."""
        frames = torch.as_tensor(frames)
        if frames.dim() == 3:
            frames = frames[None]
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got shape {tuple(frames.shape)}")
        grids = [self.features(self.preprocess(frames[start : start + self.batch_size])).float().cpu()
                 for start in range(0, frames.shape[0], self.batch_size)]
        tokens = torch.cat(grids)  # (T, h*w, C)
        return tokens.reshape(tokens.shape[0], self.grid, self.grid, self.hidden_size)


class SiglipEncoder(FrameEncoder):
    """Batched SigLIP vision tower. Not an nn.Module: it owns a frozen model."""

    def __init__(
        self,
        model_ref: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        select_layer: int = -2,
    ):
        from transformers import SiglipVisionModel

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)  # auto on a CPU: fp32 first, then measured below
        self.batch_size = batch_size
        with explain_load_errors("SigLIP weights", model_ref, SIGLIP_HINT):
            model = SiglipVisionModel.from_pretrained(model_ref, dtype=self.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)
        vision = getattr(self.model, "vision_model", self.model)  # transformers 4.x nests it
        n_layers = len(vision.encoder.layers)
        if not -n_layers <= select_layer < n_layers:
            raise WeightsError(f"encoder.select_layer={select_layer} is outside the model's {n_layers} layers")
        # Layers after the selected one are never needed: drop them instead of running them.
        keep = select_layer % n_layers + 1
        vision.encoder.layers = vision.encoder.layers[:keep]
        self.use_post_layernorm = keep == n_layers
        self._vision = vision
        cfg = self.model.config
        self.image_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        self.hidden_size = int(cfg.hidden_size)
        self.grid = self.image_size // self.patch_size
        mean, std = _mean_std(model_ref)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        if dtype == "auto" and self.device.type == "cpu":  # bf16 if native and faster (models/dtype.py)
            from pipeline.models.dtype import choose_cpu_dtype

            batch = min(batch_size, 8)
            pixels = torch.randn(batch, 3, self.image_size, self.image_size)
            key = (f"siglip {self.hidden_size}d x{keep} layers {self.image_size}px/{self.patch_size} "
                   f"batch {batch}")
            self.model, self.dtype = choose_cpu_dtype(self.model, key, lambda m: _vision_forward(m, pixels))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The selected layer's patch tokens (T, g*g, C) (post-layernorm when it is the last)."""
        hidden = self._vision.encoder(inputs_embeds=self._vision.embeddings(pixels)).last_hidden_state
        return self._vision.post_layernorm(hidden) if self.use_post_layernorm else hidden


def _vision_forward(model, pixels: torch.Tensor) -> torch.Tensor:
    """The patch tokens of a (possibly trimmed) SigLIP vision model, in the model's dtype."""
    vision = getattr(model, "vision_model", model)
    dtype = next(model.parameters()).dtype
    return vision.encoder(inputs_embeds=vision.embeddings(pixels.to(dtype))).last_hidden_state


def vision_geometry(model_ref: str) -> tuple[int, int]:
    """(image_size, hidden_size) of a SigLIP checkpoint (or a VLM's tower), from its config alone."""
    from pipeline.models.vlm import vision_spec, vlm_family

    if vlm_family(model_ref):
        spec = vision_spec(model_ref)
        return spec["image_size"], spec["hidden_size"]
    local = Path(model_ref) / "config.json"
    if local.is_file():  # a local folder: read it without importing transformers
        spec = json.loads(local.read_text())
        spec = spec.get("vision_config", spec)  # a full SiglipModel nests the vision part
        if "image_size" in spec and "hidden_size" in spec:
            return int(spec["image_size"]), int(spec["hidden_size"])
    from transformers import SiglipVisionConfig

    with explain_load_errors("the SigLIP config", model_ref, SIGLIP_HINT):
        config = SiglipVisionConfig.from_pretrained(model_ref)
    return int(config.image_size), int(config.hidden_size)


def build_random_siglip(
    path: str | Path,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int = 3072,
    image_size: int = 224,
    patch_size: int = 16,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised SigLIP vision model where from_pretrained can load it.

    No SigLIP weights are reachable offline, so demos and tests build one with this
    (defaults: SigLIP-B/16 at 224 px) and load it through the same path as a real one.
    """
    from transformers import SiglipVisionConfig, SiglipVisionModel

    path = Path(path)
    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    SiglipVisionModel(config).save_pretrained(path)
    mean, std = SIGLIP_MEAN_STD
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": mean, "image_std": std, "size": {"height": image_size, "width": image_size}})
    )
    (path / "VIDSTORM_RANDOM_WEIGHTS").write_text("randomly initialised; captions are not meaningful\n")
    return path
