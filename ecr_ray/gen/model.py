"""Generator models: a Llama-architecture base with LoRA adapters (peft), or a GPT-2-architecture
model trained in full; saved as safetensors with generator.json saying what they were built from."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ecr_ray.config import GeneratorConfig, from_dict
from ecr_ray.gen.prompts import FALLBACK_CHAT_TEMPLATE

META_FILE = "generator.json"


class GeneratorMismatch(ValueError):
    """Saved weights that do not fit the base model they are loaded onto."""


def load_tokenizer(g: GeneratorConfig, allow_download: bool = False, model: str | None = None):
    """The base's tokenizer (GPT-2's real BPE for a random GPT-2), with a pad token and a chat template."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    from ecr_ray.models import resolve_model

    name = model or g.model
    if name is None:
        tokenizer = GPT2TokenizerFast.from_pretrained(resolve_model("gpt2-tokenizer"))
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name, allow_download))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def load_base(g: GeneratorConfig, allow_download: bool = False, model: str | None = None):
    """(model, tokenizer) of the base: a packaged/local/hub model or a random GPT-2 with GPT-2's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from ecr_ray.models import resolve_model

    name = model or g.model
    tokenizer = load_tokenizer(g, allow_download, model)
    if name is None:
        if g.method != "full":
            raise ValueError("gen.generator.model=None (a random GPT-2) needs gen.generator.method=full: LoRA adapts a pretrained base")
        torch.manual_seed(g.train.seed)
        base = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=g.gpt2_layers, n_embd=g.gpt2_hidden,
                                          n_head=g.gpt2_heads, n_positions=max(1024, g.max_length),
                                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    else:
        base = AutoModelForCausalLM.from_pretrained(resolve_model(name, allow_download), dtype=getattr(torch, g.dtype))
    return base, tokenizer


def trainable(base, g: GeneratorConfig):
    """LoRA adapters on the named modules (base frozen), or the whole model."""
    if g.method == "full":
        return base
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in g.lora_targets.split(",") if t.strip()]
    return get_peft_model(base, LoraConfig(r=g.lora_r, lora_alpha=g.lora_alpha, lora_dropout=g.lora_dropout,
                                           target_modules=targets, task_type="CAUSAL_LM"))


def context_limit(model) -> int | None:
    """The model's position limit (None when it has none)."""
    c = model.config
    return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)


def build_generator(g: GeneratorConfig, allow_download: bool = False):
    base, tokenizer = load_base(g, allow_download)
    limit = context_limit(base)
    if limit and g.max_length > limit:
        raise ValueError(f"gen.generator.max_length={g.max_length} exceeds the {limit}-token context of {g.model or 'the GPT-2'}")
    return trainable(base, g), tokenizer


def _shape(model) -> dict:
    c = model.config
    return {"architecture": c.model_type, "hidden": c.hidden_size, "layers": c.num_hidden_layers, "vocab": c.vocab_size}


def save_generator(model, tokenizer, g: GeneratorConfig, folder: str | Path, extra: dict) -> None:
    """LoRA: adapter_model.safetensors + adapter_config.json; full: model.safetensors; both: tokenizer and META_FILE."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    base = model.get_base_model() if g.method == "lora" else model
    (folder / META_FILE).write_text(json.dumps({"generator": dataclasses.asdict(g), "base": _shape(base), **extra}, indent=2, sort_keys=True))


def load_generator(folder: str | Path, allow_download: bool = False, base_model: str | None = None):
    """(model in eval mode, tokenizer, meta: {generator: its config, base: its shape, ...}); `base_model` puts a LoRA
    adapter on another base, if it fits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / META_FILE).exists():
        raise FileNotFoundError(f"{folder} holds no trained generator ({META_FILE} missing)")
    meta = json.loads((folder / META_FILE).read_text())
    g = from_dict(GeneratorConfig, meta["generator"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if g.method == "full":
        return AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer, meta
    from peft import PeftModel

    base, _ = load_base(g, allow_download, base_model)
    if _shape(base) != meta["base"]:
        raise GeneratorMismatch(f"the LoRA adapter in {folder} was trained on {g.model} {meta['base']}; "
                                f"the base model {base_model or g.model} is {_shape(base)}: train an adapter for that base")
    try:
        model = PeftModel.from_pretrained(base, folder)
    except (RuntimeError, ValueError) as err:
        raise GeneratorMismatch(f"the LoRA adapter in {folder} does not fit the base model {base_model or g.model}: {err}") from None
    return model.eval(), tokenizer, meta
