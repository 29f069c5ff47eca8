"""Structured outputs: at every step only the tokens that keep the answer a prefix of a JSON document of
the request's schema may be generated, so even the smallest local model answers valid JSON.

The grammar and the token masks are llguidance's, a maintained engine (the one behind Guidance, and used
by vLLM and SGLang): it covers JSON Schema as OpenAI's strict mode and more ($ref, anyOf/oneOf, pattern,
minimum/maximum, minLength, format), works on bytes (a character split across tokens is fine) and is
incremental (a step costs the new token, not the whole text again). A schema it cannot compile is
refused with its reason, never half-enforced.
"""
from __future__ import annotations

import weakref

# compact, as json.dumps writes: with flexible whitespace a small model may pad an answer forever
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # llguidance's view of a tokenizer: ~1 s to build


def response_schema(response_format: dict | None) -> dict | None:
    """The schema a request's OpenAI `response_format` asks for: None for text, any object for
    json_object, the given schema for json_schema."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    if response_format["type"] == "json_object":
        return {"type": "object"}
    if response_format["type"] == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
    raise ValueError(f"response_format type {response_format['type']!r} is not one of text, json_object, json_schema")


def schema_grammar(schema: dict) -> str:
    """llguidance's grammar for a JSON schema; ValueError with the engine's reason when it cannot be enforced
    (an unknown keyword included: nothing is silently ignored)."""
    from llguidance import LLMatcher

    grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise ValueError(f"the schema cannot be enforced: {messages[0]}")
    return grammar


def _ll_tokenizer(tokenizer):
    if tokenizer not in _TOKENIZERS:
        import llguidance.hf

        _TOKENIZERS[tokenizer] = llguidance.hf.from_tokenizer(tokenizer)
    return _TOKENIZERS[tokenizer]


class SchemaLogitsProcessor:
    """A transformers logits processor (batch of one) allowing only the tokens that keep the generated text a
    prefix of a document of the grammar (`schema_grammar`), and the end-of-sequence token only once the
    document is complete."""

    def __init__(self, grammar: str, tokenizer, prompt_length: int):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(_ll_tokenizer(tokenizer), grammar)
        self.prompt_length, self.consumed = prompt_length, 0

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch

        new = input_ids[0, self.prompt_length + self.consumed :].tolist()
        if new and not self.matcher.consume_tokens(new):  # cannot happen for tokens this mask allowed
            raise RuntimeError(f"constrained decoding: {self.matcher.get_error()}")
        self.consumed += len(new)
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = torch.from_numpy(np.unpackbits(bits, bitorder="little").astype(bool))  # bit i: token i may come next
        width = min(len(allowed), scores.shape[-1])  # the model's vocabulary may be padded beyond the tokenizer's
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool)
        keep[:width] = allowed[:width]
        return scores.masked_fill(~keep.to(scores.device), float("-inf"))
