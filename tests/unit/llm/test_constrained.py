import json

import pytest

from ecr_ray.llm.constrained import COMPLETE, INVALID, PARTIAL, SchemaLogitsProcessor, prefix_state, response_schema

SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["like", "negative"]},
                                           "score": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                                           "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
          "required": ["label", "score"], "additionalProperties": False}


@pytest.mark.parametrize("text, state", [
    ("", PARTIAL), ("  {", PARTIAL), ('{"la', PARTIAL), ('{"label": "li', PARTIAL), ('{"label": "like"', PARTIAL),
    ('{"label": "like", "score": 1', PARTIAL), ('{"label": "like", "score": -12}', COMPLETE),
    ('{"score": 3, "label": "negative", "tags": ["a", "b"], "note": null}\n', COMPLETE),
    ('{"label": "like", "score": 1, "note": "fine \\u00e9"}', COMPLETE),
    ('{"lab": 1', INVALID),  # not a property
    ('{"label": "love"', INVALID),  # not in the enum
    ('{"label": "like"}', INVALID),  # score is required
    ('{"label": "like", "score": 1.5', INVALID),  # an integer
    ('{"label": "like", "label"', INVALID),  # twice
    ('{"label": "like", "score": 1, "tags": ["a", "b", "c"]', INVALID),  # maxItems
    ('{"label": "like", "score": 1}}', INVALID), ("[", INVALID), ("{" + " " * 20, INVALID), ("{\n\n", INVALID),
])
def test_prefix_state_follows_the_schema(text, state):
    assert prefix_state(SCHEMA, text) == state


def test_json_object_is_any_object_and_numbers_and_literals_are_json():
    any_object = response_schema({"type": "json_object"})
    assert prefix_state(any_object, '{"a": [1, 2.5e3, true, {"b": null}], "c": "d"}') == COMPLETE
    assert prefix_state(any_object, '{"a": tru') == PARTIAL and prefix_state(any_object, '{"a": trux') == INVALID
    assert prefix_state(any_object, '{"a": 01}') == INVALID and prefix_state(any_object, '{"a": 1e') == PARTIAL
    assert prefix_state(any_object, '"text"') == INVALID  # an object, not any value
    assert response_schema(None) is None and response_schema({"type": "text"}) is None
    assert response_schema({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}) is SCHEMA
    with pytest.raises(ValueError, match="response_format type 'xml'"):
        response_schema({"type": "xml"})


class _Characters:
    """A tokenizer whose tokens are single characters (and token 0 is the end of sequence)."""
    alphabet = ["<eos>", *'{}[]":, abcdefghijklmnopqrstuvwxyz0123456789-.']
    eos_token_id, all_special_ids = 0, [0]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.alphabet[i] for i in ids if not (skip_special_tokens and i == 0))


def test_the_processor_turns_any_preference_into_a_valid_document():
    """Scores that prefer plain prose still yield a document of the schema, then only the end."""
    import torch

    tokenizer, schema = _Characters(), {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                                        "additionalProperties": False}
    processor = SchemaLogitsProcessor(schema, tokenizer, prompt_length=0)
    prose = torch.tensor([[5.0 if c in "hello " else 0.0 for c in tokenizer.alphabet]])
    ids = torch.zeros((1, 0), dtype=torch.long)
    for _ in range(120):
        token = int(processor(ids, prose.clone()).argmax())
        if token == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
    text = tokenizer.decode(ids[0].tolist())
    assert json.loads(text) in ({"ok": True}, {"ok": False}) and token == tokenizer.eos_token_id
