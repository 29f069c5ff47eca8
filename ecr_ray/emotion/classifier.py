"""The emotion classifier: a text encoder (registry of backbones), mean pooling, a 9-way head (the
stance model, emotion/stance.py, is the same network with a 3-way head).

Plain PyTorch; knows nothing of Ray or devices. Saved as `encoder/` (HF folder with tokenizer),
`head.safetensors` and `classifier.json`; loading refuses a folder trained for other labels.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ecr_ray.config import ClassifierConfig
from ecr_ray.emotion.labels import LABELS
from ecr_ray.models import resolve_model


class EmotionClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int = len(LABELS)):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # we mean-pool the hidden states; an unused pooler breaks DDP's gradient sync
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real tokens' states (padding left out)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _minilm(cfg: ClassifierConfig, allow_download: bool):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    packaged = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(packaged)
    if cfg.pretrained is None:
        return AutoModel.from_config(AutoConfig.from_pretrained(packaged)), tokenizer
    return AutoModel.from_pretrained(resolve_model(cfg.pretrained, allow_download)), tokenizer


def _gpt2(cfg: ClassifierConfig, allow_download: bool):
    """GPT-2 architecture with GPT-2's real BPE tokenizer; the paper's weights by hub name."""
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(resolve_model("gpt2-tokenizer"))
    tokenizer.pad_token = tokenizer.eos_token
    if cfg.pretrained is not None:
        return GPT2Model.from_pretrained(resolve_model(cfg.pretrained, allow_download)), tokenizer
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(cfg.max_length, 64), n_layer=cfg.gpt2_layers,
                        n_embd=cfg.gpt2_hidden, n_head=cfg.gpt2_heads)
    return GPT2Model(config), tokenizer


BACKBONES: dict[str, Callable] = {"minilm": _minilm, "gpt2": _gpt2}


def build_classifier(cfg: ClassifierConfig, allow_download: bool = False, labels: tuple[str, ...] = LABELS):
    """(EmotionClassifier, tokenizer) for a config; the seed fixes the head's initialisation."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown classifier backbone {cfg.backbone!r}; known: {', '.join(BACKBONES)}")
    torch.manual_seed(cfg.train.seed)
    encoder, tokenizer = BACKBONES[cfg.backbone](cfg, allow_download)
    return EmotionClassifier(encoder, len(labels)), tokenizer


def encode(tokenizer, texts, max_length: int) -> dict:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def by_length(texts: list[str], size: int) -> list[list[int]]:
    """The indices of `texts` in chunks of `size`, longest first: a padded chunk then holds texts of about one
    length (2,048 utterances in chunks of 64: 15.7 s in their order, 6.5 s sorted)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def save_classifier(model: EmotionClassifier, tokenizer, cfg: ClassifierConfig, folder: str | Path, metrics: dict,
                    labels: tuple[str, ...] = LABELS) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    model.encoder.save_pretrained(folder / "encoder")
    tokenizer.save_pretrained(folder / "encoder")
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, folder / "head.safetensors")
    meta = {"labels": list(labels), "config": dataclasses.asdict(cfg), "metrics": metrics}
    (folder / "classifier.json").write_text(json.dumps(meta, indent=2))


def load_classifier(folder: str | Path, labels: tuple[str, ...] = LABELS):
    """(model in eval mode, tokenizer, meta) of a saved classifier of `labels`."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    if not (folder / "classifier.json").exists():
        raise FileNotFoundError(f"no trained emotion classifier in {folder} (run the emotion stages first)")
    meta = json.loads((folder / "classifier.json").read_text())
    if meta["labels"] != list(labels):
        raise ValueError(f"{folder} was trained for labels {meta['labels']}, not {list(labels)}")
    tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = EmotionClassifier(AutoModel.from_pretrained(folder / "encoder"), len(labels))
    model.head.load_state_dict(load_file(folder / "head.safetensors"))
    return model.eval(), tokenizer, meta
