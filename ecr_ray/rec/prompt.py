"""The paper's prompt-learning context encoder (UniCRS/ECR style), plain PyTorch.

A frozen text encoder (RoBERTa architecture) reads the context; learned prefix queries attend over
its token states and the emotion-fused entity states, giving prefix prompts that are prepended to
the context's token embeddings in a frozen causal LM (GPT-2 architecture, DialoGPT in the paper
preset). The LM's state at the last context token is the context vector. Only the prompt module
learns. Both models are pretrained by name, or randomly initialised at small sizes (tests, CPU).
"""
from __future__ import annotations

import torch
from torch import nn

from ecr_ray.config import PromptConfig
from ecr_ray.models import resolve_model


def _gpt2_tokenizer(truncation_side: str):
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(resolve_model("gpt2-tokenizer"), truncation_side=truncation_side)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def text_encoder(cfg: PromptConfig, allow_download: bool):
    from transformers import AutoModel, AutoTokenizer, RobertaConfig, RobertaModel

    if cfg.text_encoder is not None:
        path = resolve_model(cfg.text_encoder, allow_download)
        return AutoModel.from_pretrained(path, add_pooling_layer=False), AutoTokenizer.from_pretrained(path, truncation_side="left")
    tokenizer = _gpt2_tokenizer("left")  # RoBERTa's vocabulary is GPT-2's BPE
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                           num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden, pad_token_id=1,
                           max_position_embeddings=cfg.max_length + 2)
    return RobertaModel(config, add_pooling_layer=False), tokenizer


def causal_lm(cfg: PromptConfig, allow_download: bool):
    from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2Model

    if cfg.lm is not None:
        path = resolve_model(cfg.lm, allow_download)
        tokenizer = AutoTokenizer.from_pretrained(path, truncation_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return AutoModel.from_pretrained(path), tokenizer
    tokenizer = _gpt2_tokenizer("left")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.max_length + cfg.n_prefix, n_embd=cfg.hidden,
                        n_layer=cfg.layers, n_head=cfg.heads)
    return GPT2Model(config), tokenizer


class PromptContext(nn.Module):
    def __init__(self, cfg: PromptConfig, hidden: int, allow_download: bool = False):
        super().__init__()
        self.cfg = cfg
        self.text_encoder, self.text_tokenizer = text_encoder(cfg, allow_download)
        self.lm, self.lm_tokenizer = causal_lm(cfg, allow_download)
        for frozen in (self.text_encoder, self.lm):
            frozen.requires_grad_(False)
        heads = next(h for h in (4, 2, 1) if hidden % h == 0)
        self.token_proj = nn.Linear(self.text_encoder.config.hidden_size, hidden)
        self.prefix = nn.Parameter(torch.randn(cfg.n_prefix, hidden) * hidden**-0.5)
        self.attend = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.to_lm = nn.Linear(hidden, self.lm.config.hidden_size)
        self.out = nn.Linear(self.lm.config.hidden_size, hidden)

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval(), self.lm.eval()  # frozen: no dropout
        return self

    def features(self, batch: dict) -> dict:
        texts = [t or "." for t in batch["context_text"]]
        text = self.text_tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        lm = self.lm_tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        return {"text_ids": text["input_ids"], "text_mask": text["attention_mask"], "lm_ids": lm["input_ids"], "lm_mask": lm["attention_mask"]}

    def forward(self, inputs: dict, entity_states: torch.Tensor, entity_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = inputs["text_ids"], inputs["text_mask"]
        positions = torch.arange(ids.shape[1], device=ids.device) + self.text_encoder.config.pad_token_id + 1
        with torch.no_grad():
            tokens = self.text_encoder(input_ids=ids, attention_mask=mask, position_ids=positions.expand_as(ids)).last_hidden_state
        keys = torch.cat([entity_states, self.token_proj(tokens)], 1)
        key_mask = torch.cat([entity_mask, mask.bool()], 1)
        query = self.prefix.expand(ids.shape[0], -1, -1)
        prompts, _ = self.attend(query, keys, keys, key_padding_mask=~key_mask, need_weights=False)
        prompts = self.to_lm(prompts + query)
        lm_mask = inputs["lm_mask"]
        embeds = torch.cat([prompts, self.lm.get_input_embeddings()(inputs["lm_ids"])], 1)
        full_mask = torch.cat([torch.ones(prompts.shape[:2], dtype=lm_mask.dtype, device=lm_mask.device), lm_mask], 1)
        states = self.lm(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
        last = self.cfg.n_prefix + lm_mask.sum(1) - 1  # right padding: the last real token of each context
        return self.out(states[torch.arange(states.shape[0], device=states.device), last])

