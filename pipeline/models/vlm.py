"""A pretrained VLM as STORM's base: its vision tower, its connector and its LLM, from one checkpoint.

STORM (appendix 8.3) is "pixel shuffle + Linear into the LLM, then the Mamba layers", and a VLM of the
SmolVLM family (Idefics3: SigLIP -> pixel shuffle x scale_factor -> Linear -> SmolLM2) is exactly that
without the temporal module. So the temporal module goes *after the VLM's own connector*, in the LLM's
embedding space, with no projector after it; started as the identity it leaves the VLM as it was.
LLaVA-OneVision (SigLIP -> MLP -> bilinear 2x pooling of video frames -> Qwen2) is the "standard"
pipeline; the module sits after its MLP and pooling.

    frames (T, S, S, 3) --VlmVision.encode--> (T, g, g, C)  the tower's features the connector reads
                        --VlmConnector-->     (T, h, w, D)  D = the LLM's hidden size
                        --Mamba blocks, pooling--> the LLM, spliced at the family's image tokens

The family is read from the checkpoint's config (`model_type`). The HF model is loaded once per
process (`load_vlm`) and each part keeps a reference to its own modules: the encoder stage holds the
tower, the temporal stage the connector, the summarizer the LLM. Pre-processing is plain torch (the
transformers processors need torchvision): rgb24 -> x/255 -> (x - mean) / std at the tower's size.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import WeightsError, explain_load_errors
from pipeline.models.siglip import FrameEncoder, _mean_std

VLM_HINT = "set encoder.model / summarizer.model to a local VLM folder or a reachable hub id"
FAMILIES = {"smolvlm": "smolvlm", "idefics3": "smolvlm", "llava_onevision": "llava_onevision"}


def _config_file(ref: str, name: str) -> Path | None:
    """A file of a checkpoint: in its folder, or in the local hub cache (never the network)."""
    local = Path(ref) / name
    if local.is_file():
        return local
    if Path(ref).exists() or ref.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, name)
        return Path(cached) if isinstance(cached, str) else None
    except Exception:
        return None


def read_config(ref: str, fetch: bool = False) -> dict:
    """The checkpoint's config.json ({} when it has none that can be read here). fetch=True: a hub id
    that is not cached is downloaded (one clear WeightsError when the hub cannot be reached)."""
    path = _config_file(str(ref), "config.json") if ref else None
    if path is None and fetch and ref and not Path(ref).exists():
        from huggingface_hub import hf_hub_download

        with explain_load_errors("the model config", ref, VLM_HINT):
            path = Path(hf_hub_download(ref, "config.json"))
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _json_file(path: Path) -> dict:
    """A checkpoint's JSON settings file, or one WeightsError line naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not valid JSON ({err}); fix or re-download the checkpoint") from None


def vlm_family(ref: str, fetch: bool = False) -> str | None:
    """'smolvlm' | 'llava_onevision' for a VLM checkpoint, None for anything else (`read_config`)."""
    return FAMILIES.get(read_config(ref, fetch).get("model_type", ""))


PROCESSOR_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "preprocessor_config.json")


@functools.lru_cache(maxsize=2)
def load_vlm(ref: str, dtype: torch.dtype):
    """The whole HF model, loaded once per process and dtype while the parts are built (each part keeps
    only its own modules; `release_vlms` drops the rest)."""
    from transformers import AutoModelForImageTextToText

    with explain_load_errors("the VLM", ref, VLM_HINT):
        model = AutoModelForImageTextToText.from_pretrained(ref, dtype=dtype)
    fetch_processor_files(ref)
    return model.eval().requires_grad_(False)


def release_vlms() -> None:
    """Forget the loaded VLMs: a stage that built only the tower (or only the LLM) frees the other parts."""
    load_vlm.cache_clear()


def fetch_processor_files(ref: str) -> None:
    """A hub checkpoint's chat template and processor settings live beside the weights, which
    from_pretrained does not fetch: one download of whichever exist (once; best effort, the model loaded)."""
    if Path(ref).exists() or ref.count("/") != 1 or any(_config_file(ref, n) for n in PROCESSOR_FILES[:3]):
        return
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(ref, allow_patterns=list(PROCESSOR_FILES))
    except Exception:  # offline with the weights cached: the tokenizer's template and the defaults stand
        pass


def _inner(model):
    return model.model  # SmolVLMModel / LlavaOnevisionModel


def vision_spec(ref: str) -> dict:
    """image_size, patch_size, hidden_size of the VLM's tower, from its config alone."""
    cfg = read_config(ref)
    if not cfg:
        from transformers import AutoConfig

        with explain_load_errors("the VLM config", ref, VLM_HINT):
            cfg = AutoConfig.from_pretrained(ref).to_dict()
    vision = cfg.get("vision_config", {})
    defaults = {"smolvlm": (512, 16, 768), "llava_onevision": (384, 14, 1152)}[FAMILIES[cfg["model_type"]]]
    return {k: int(vision.get(k, d)) for k, d in zip(("image_size", "patch_size", "hidden_size"), defaults)}


def text_hidden_size(ref: str) -> int:
    cfg = read_config(ref)
    if "text_config" in cfg and "hidden_size" in cfg["text_config"]:
        return int(cfg["text_config"]["hidden_size"])
    from transformers import AutoConfig

    with explain_load_errors("the VLM config", ref, VLM_HINT):
        return int(AutoConfig.from_pretrained(ref).get_text_config().hidden_size)


class VlmVision(FrameEncoder):
    """The VLM's vision tower, with `SiglipEncoder`'s interface: uint8 frames -> (T, g, g, C).

    SmolVLM: the tower's last hidden state (post-layernorm), as `get_image_features` feeds its
    connector, one image per frame (no tiling). LLaVA-OneVision: hidden_states[vision_feature_layer]
    as `get_video_features` takes them.
    """

    def __init__(self, model_ref: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16):
        from pipeline.models.siglip import resolve_device, resolve_dtype

        self.family = vlm_family(model_ref)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        model = load_vlm(model_ref, self.dtype)
        inner, cfg = _inner(model), model.config
        if self.family == "smolvlm":
            self.tower = inner.vision_model
        else:
            self.tower = inner.vision_tower
            if cfg.vision_feature_select_strategy != "full" or not isinstance(cfg.vision_feature_layer, int):
                raise WeightsError(f"{model_ref}: vision_feature_select_strategy={cfg.vision_feature_select_strategy!r}"
                                   f" / vision_feature_layer={cfg.vision_feature_layer!r} is not supported (a SigLIP "
                                   "tower has no CLS token: 'full' and one layer)")
            self.feature_layer = cfg.vision_feature_layer
        self.tower.to(self.device)
        spec = vision_spec(model_ref)
        self.image_size, self.patch_size, self.hidden_size = spec["image_size"], spec["patch_size"], spec["hidden_size"]
        self.grid = self.image_size // self.patch_size
        mean, std = _mean_std(model_ref)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (T, 3, S, S) -> the tower's tokens (T, g*g, C) that the connector reads."""
        if self.family == "smolvlm":
            t, _, s, _ = pixels.shape
            patches = torch.ones(t, s // self.patch_size, s // self.patch_size, dtype=torch.bool, device=pixels.device)
            return self.tower(pixel_values=pixels, patch_attention_mask=patches).last_hidden_state
        return self.tower(pixels, output_hidden_states=True).hidden_states[self.feature_layer]


class VlmConnector(nn.Module):
    """The VLM's own connector, per frame: (B, T, g, g, C) -> (B, T, h, w, D) in the LLM's space.

    SmolVLM: its `SmolVLMConnector` (pixel shuffle x scale_factor + Linear), reused as is.
    LLaVA-OneVision: its MLP projector, then `apply_pooling` (bilinear to ceil(g/2)), as its video path.
    """

    def __init__(self, family: str, module: nn.Module, out_dim: int, grid: int, scale: int):
        super().__init__()
        self.family, self.module, self.out_dim, self.grid, self.scale = family, module, out_dim, grid, scale

    @classmethod
    def from_vlm(cls, model_ref: str, dtype: torch.dtype) -> "VlmConnector":
        import copy

        model = load_vlm(model_ref, dtype)
        family, inner, grid = vlm_family(model_ref), _inner(model), vision_spec(model_ref)
        grid = grid["image_size"] // grid["patch_size"]
        out_dim = text_hidden_size(model_ref)
        if family == "smolvlm":  # a copy: training it must not change the loaded VLM under other parts
            return cls(family, copy.deepcopy(inner.connector), out_dim, grid, int(model.config.scale_factor))
        return cls(family, copy.deepcopy(inner.multi_modal_projector), out_dim, grid, 2)

    def still(self, grids: torch.Tensor) -> torch.Tensor:
        """A still image's grid (B, 1, g, g, C) -> its image-path tokens. SmolVLM: one image, as `forward`.
        LLaVA-OneVision: its anyres path at the tower's size, the base view and one tile (the same picture),
        each g x g through the MLP with no pooling -> (B, 2, g, g, D); `VlmLayout.extend` adds its newlines."""
        if self.family == "smolvlm":
            return self(grids)
        b, _, g, _, c = grids.shape
        x = self.module(grids.reshape(b, g * g, c).to(next(self.module.parameters()).dtype))  # (B, g*g, D)
        return x.reshape(b, 1, g, g, -1).expand(b, 2, g, g, x.shape[-1]).float()

    def out_grid(self, grid: int) -> int:
        return grid // self.scale if self.family == "smolvlm" else math.ceil(grid / 2)

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        b, t, g, _, c = grids.shape
        x = grids.reshape(b * t, g * g, c).to(next(self.module.parameters()).dtype)  # (BT, g*g, C)
        if self.family == "smolvlm":
            x = self.module(x)  # (BT, (g/s)^2, D), row-major over the (g/s, g/s) grid
        else:
            x = self.module(x).reshape(b * t, g, g, -1).permute(0, 3, 1, 2)  # (BT, D, g, g)
            x = F.interpolate(x, size=[math.ceil(g / 2), math.ceil(g / 2)], mode="bilinear")
            x = x.permute(0, 2, 3, 1)
        h = self.out_grid(g)
        return x.reshape(b, t, h, h, -1).float()


# --- the LLM side: language model, chat template and the family's image-token layout ---


def causal_lm_of(vlm) -> nn.Module:
    """The VLM's language model + head as a plain causal LM that shares the VLM's modules (no copy):
    LoRA, `inputs_embeds` generation and training treat it like any other LLM."""
    from transformers import AutoModelForCausalLM

    text_config = vlm.config.get_text_config()
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    inner = _inner(vlm)
    lm.model = inner.text_model if hasattr(inner, "text_model") else inner.language_model
    lm.lm_head = vlm.lm_head
    lm.generation_config = vlm.generation_config
    return lm.eval()


def chat_template(ref: str, tokenizer) -> str:
    """The checkpoint's chat template: the processor's file (chat_template.jinja / .json), else the
    tokenizer's. For SmolVLM with neither, the processor's default (transformers ships it)."""
    path = _config_file(ref, "chat_template.jinja")
    if path:
        return path.read_text()
    path = _config_file(ref, "chat_template.json")
    if path:
        return json.loads(path.read_text())["chat_template"]
    if tokenizer.chat_template:
        return tokenizer.chat_template
    if vlm_family(ref) == "smolvlm":
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

        return DEFAULT_CHAT_TEMPLATE
    raise WeightsError(f"{ref}: no chat template (chat_template.jinja, chat_template.json or the tokenizer's)")


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """num2words for 0-99 (SmolVLM2's video intro spells the frame count; num2words is not installed)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens - 2] + (f"-{_ONES[ones]}" if ones else "")
    return str(n)


class VlmLayout:
    """Where visual tokens go in a VLM's prompt: its chat template and image tokens, as its processor
    would write them, and one slot token per visual token (filled by `Summarizer.splice`)."""

    def __init__(self, ref: str, tokenizer, vlm):
        self.family = vlm_family(ref)
        self.tokenizer = tokenizer
        self.template = chat_template(ref, tokenizer)
        cfg = vlm.config
        if self.family == "smolvlm":
            self.image_token = getattr(tokenizer, "image_token", None) or "<image>"
            self.fake_token = "<fake_token_around_image>"
            self.global_token = "<global-img>"
            own = int(((cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2) / cfg.scale_factor**2)
            stored = self._processor_value(ref, "image_seq_len")
            if stored is not None and int(stored) != own:
                raise WeightsError(f"{ref}: processor_config.json says image_seq_len={stored} but the model computes "
                                   f"{own} from its config; the checkpoint is inconsistent")
            self.slot_id = int(cfg.image_token_id)
            self.newline = None
        else:
            self.slot_id = int(cfg.video_token_id)
            self.video_token = tokenizer.convert_ids_to_tokens(self.slot_id)
            self.still_id = int(cfg.image_token_id)
            self.still_token = tokenizer.convert_ids_to_tokens(self.still_id)
            self.newline = _inner(vlm).image_newline  # (D,) after the last frame, as get_video_features adds

    @staticmethod
    def _processor_value(ref: str, key: str):
        path = _config_file(ref, "processor_config.json")
        return _json_file(path).get(key) if path else None

    def render(self, content: list[dict], system: str = "") -> str:
        messages = [{"role": "user", "content": content}]
        if system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=True)

    def _image_string(self, per_frame: int) -> str:
        return self.fake_token + self.global_token + self.image_token * per_frame + self.fake_token

    def text(self, prompt: str, n_frames: int, per_frame: int, t_start: float | None, t_end: float | None,
             system: str = "") -> str:
        """The whole prompt text with every visual slot written out.

        A still image (t_start None) is the chat [image, prompt]; a video chunk is [video, prompt] with the
        family's video layout: SmolVLM2's intro, a 'Frame from MM:SS:' line and an image block per (pooled)
        frame; LLaVA-OneVision's <video> tokens for every frame's tokens + one newline token.
        """
        prompt = prompt.replace("<video>", "").strip()
        if t_start is None:  # a still image: the family's image chat
            chat = self.render([{"type": "image"}, {"type": "text", "text": prompt}], system)
            if self.family == "smolvlm":
                if n_frames != 1:
                    raise ValueError(f"a still image is one frame, got {n_frames}")
                return chat.replace(self.image_token, self._image_string(per_frame), 1)
            # LLaVA-OneVision at its own size: the base view + one tile with a newline after each row
            if n_frames != 2:
                raise ValueError(f"a still image is its base view and one tile, got {n_frames} grids")
            g = math.isqrt(per_frame)
            return chat.replace(self.still_token, self.still_token * (2 * per_frame + g), 1)
        chat = self.render([{"type": "video"}, {"type": "text", "text": prompt}], system)
        if self.family == "smolvlm":
            from datetime import timedelta

            step = ((t_end or 0.0) - (t_start or 0.0)) / max(n_frames, 1)
            intro = (f"You are provided the following series of {number_words(n_frames)} frames from a "
                     f"{timedelta(seconds=int((t_end or 0.0) - (t_start or 0.0)))} [H:MM:SS] video.\n")
            frames = ""
            for j in range(n_frames):
                second = (t_start or 0.0) + j * step
                frames += f"\nFrame from {int(second // 60):02d}:{int(second % 60):02d}:" + self._image_string(per_frame)
            return chat.replace("<video>", intro + frames + "\n\n", 1)
        return chat.replace(self.video_token, self.video_token * (n_frames * per_frame + 1), 1)

    def ids(self, text: str, still: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (n,), visual slot mask (n,)) of a prompt text, tokenised as the family's processor does."""
        ids = self.tokenizer(text, return_tensors="pt").input_ids[0]
        return ids, ids == (self.still_id if still and self.family != "smolvlm" else self.slot_id)

    def extend(self, visual: torch.Tensor, still: bool = False) -> torch.Tensor:
        """The visual tokens (n, D) as the LLM reads them. LLaVA-OneVision: a video's frames + its newline
        vector; a still image (base view, tile: 2 g*g tokens) as `pack_image_features` packs it, the base
        view, then the tile with the newline after each of its rows."""
        if self.newline is None:
            return visual
        newline = self.newline.to(visual.device, visual.dtype)
        if not still:
            return torch.cat([visual, newline[None]])
        half = visual.shape[0] // 2
        g = math.isqrt(half)
        tile = torch.cat([visual[half:].reshape(g, g, -1), newline.expand(g, 1, -1)], dim=1)  # (g, g+1, D)
        return torch.cat([visual[:half], tile.reshape(-1, visual.shape[-1])])
