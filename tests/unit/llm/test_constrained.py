"""Structured outputs through llguidance, on the packaged SmolLM2 tokenizer: whatever the model prefers, the
answer is a document of the schema, the keywords the old hand-written parser ignored included."""
import json
import re

import pytest
import torch

from ecr_ray.llm.constrained import SchemaLogitsProcessor, response_schema, schema_grammar

SCHEMA = {"$defs": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
          "type": "object", "properties": {
              "code": {"$ref": "#/$defs/code"}, "n": {"type": "integer", "minimum": 10, "maximum": 99},
              "name": {"type": "string", "minLength": 5, "maxLength": 8},
              "kind": {"oneOf": [{"const": "café ☕"}, {"const": "thé"}]},  # characters split across byte tokens
              "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2}},  # bounded: greedy prose never ends a string
          "required": ["code", "n", "name", "kind"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ecr_ray.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def _decode(tokenizer, schema: dict, preferred: str) -> tuple[str, bool]:
    """Greedy decoding under the processor from scores that prefer the tokens of `preferred`: (text, ended)."""
    processor = SchemaLogitsProcessor(schema_grammar(schema), tokenizer, prompt_length=1)
    ids, scores = torch.tensor([[tokenizer.eos_token_id]]), torch.zeros(1, len(tokenizer) + 7)  # a prompt; a padded vocabulary
    scores[0, tokenizer(preferred)["input_ids"]] = 5.0
    for _ in range(200):
        token = int(processor(ids, scores.clone()).argmax())
        if token == tokenizer.eos_token_id:
            return tokenizer.decode(ids[0, 1:]), True
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
    return tokenizer.decode(ids[0, 1:]), False


@pytest.mark.parametrize("preferred", ["hello world, this is prose", "0123456789 999", '{"n": 5, "name": "ab"}'])
def test_any_preference_yields_a_document_of_the_schema_then_the_end(tokenizer, preferred):
    text, ended = _decode(tokenizer, SCHEMA, preferred)
    answer = json.loads(text)
    assert ended and set(answer) >= {"code", "n", "name", "kind"} and set(answer) <= set(SCHEMA["properties"])
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", answer["code"]) and 10 <= answer["n"] <= 99 and isinstance(answer["n"], int)
    assert 5 <= len(answer["name"]) <= 8 and answer["kind"] in ("café ☕", "thé") and len(answer.get("tags", [])) <= 2


def test_json_object_is_any_object(tokenizer):
    text, ended = _decode(tokenizer, response_schema({"type": "json_object"}), '[1, 2] {"a": true}')
    assert ended and isinstance(json.loads(text), dict)


def test_response_format_and_a_schema_that_cannot_be_enforced_is_refused():
    assert response_schema(None) is None and response_schema({"type": "text"}) is None
    assert response_schema({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}) is SCHEMA
    with pytest.raises(ValueError, match="response_format type 'xml'"):
        response_schema({"type": "xml"})
    with pytest.raises(ValueError, match="cannot be enforced.*strnig"):
        schema_grammar({"type": "strnig"})
    with pytest.raises(ValueError, match="cannot be enforced.*missing"):
        schema_grammar({"$ref": "#/$defs/missing"})
