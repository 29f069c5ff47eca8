"""Constrained decoding for structured outputs: only tokens that keep the text a prefix of a JSON
document matching a schema may be generated, so even the smallest local model answers valid JSON.

`prefix_state(schema, text)` parses the text with a small recursive-descent reader of the schema
(object properties, required and additionalProperties — only the named properties unless
`additionalProperties` allows more, as OpenAI's strict mode requires —, array items and min/maxItems, string / enum
/ const, integer, number, boolean, null, anyOf; an empty schema is any JSON value) and says whether
it is a complete document, an unfinished one, or cannot become one. `SchemaLogitsProcessor` asks
that of the most likely tokens at every step and masks the rest; once the document is complete only
the end-of-sequence token is left. Parsing is re-done from the start each time: answers are short.
"""
from __future__ import annotations

import json
import re

COMPLETE, PARTIAL, INVALID = "complete", "partial", "invalid"
MAX_SPACE = 8  # whitespace characters allowed between JSON tokens, one line break at most (a model must not pad forever)
CANDIDATES = 64  # tokens tried per step, most likely first, before the whole vocabulary is searched
ANY: dict = {}


class _More(Exception):
    """The text ended where the document could still continue."""


class _Bad(Exception):
    """The text cannot be continued into a document of the schema."""


class _Reader:
    def __init__(self, text: str):
        self.text, self.i = text, 0

    def peek(self) -> str:
        if self.i >= len(self.text):
            raise _More
        return self.text[self.i]

    def space(self) -> None:
        start = self.i
        while self.i < len(self.text) and self.text[self.i] in " \t\n\r":
            self.i += 1
        run = self.text[start : self.i]
        if len(run) > MAX_SPACE or run.count("\n") + run.count("\r") > 1:
            raise _Bad

    def literal(self, word: str) -> None:
        rest = self.text[self.i : self.i + len(word)]
        if not word.startswith(rest):
            raise _Bad
        self.i += len(rest)
        if len(rest) < len(word):
            raise _More

    def string(self) -> str:
        if self.peek() != '"':
            raise _Bad
        self.i += 1
        out = []
        while True:
            c = self.peek()
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                e = self.peek()
                self.i += 1
                if e == "u":
                    digits = self.text[self.i : self.i + 4]
                    if any(d not in "0123456789abcdefABCDEF" for d in digits):
                        raise _Bad
                    self.i += len(digits)
                    if len(digits) < 4:
                        raise _More
                    out.append(chr(int(digits, 16)))
                elif e in '"\\/bfnrt':
                    out.append(json.loads(f'"\\{e}"'))
                else:
                    raise _Bad
            elif ord(c) < 0x20:
                raise _Bad
            else:
                out.append(c)

    def number(self, integer: bool) -> None:
        start = self.i
        allowed = "-0123456789" if integer else "-0123456789.eE+"
        while self.i < len(self.text) and self.text[self.i] in allowed:
            self.i += 1
        token = self.text[start : self.i]
        if self.i == len(self.text):
            if not token or _number_prefix(token, integer):
                raise _More
            raise _Bad
        try:
            json.loads(token)
        except ValueError:
            raise _Bad from None
        if integer and not token.lstrip("-").isdigit():
            raise _Bad


def _number_prefix(token: str, integer: bool) -> bool:
    """Whether `token` can still grow into a JSON number (an integer when asked)."""
    pattern = r"-?(0|[1-9]\d*)?" if integer else r"-?((0|[1-9]\d*)(\.\d*)?([eE][+-]?\d*)?)?"
    return re.fullmatch(pattern, token) is not None


def _value(r: _Reader, schema: dict) -> None:
    r.space()
    c = r.peek()
    if "anyOf" in schema:
        return _any_of(r, schema["anyOf"])
    if "const" in schema or "enum" in schema:
        return _choice(r, [schema["const"]] if "const" in schema else schema["enum"])
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else ["object", "array", "string", "number", "boolean", "null"]
    if c == "{" and "object" in kinds:
        return _object(r, schema)
    if c == "[" and "array" in kinds:
        return _array(r, schema)
    if c == '"' and "string" in kinds:
        r.string()
        return None
    if c in "-0123456789" and ({"number", "integer"} & set(kinds)):
        return r.number(integer="number" not in kinds)
    for word, name in (("true", "boolean"), ("false", "boolean"), ("null", "null")):
        if name in kinds and word.startswith(r.text[r.i : r.i + len(word)]):
            return r.literal(word)
    raise _Bad


def _any_of(r: _Reader, options: list[dict]) -> None:
    """The first option the text fits; unfinished when one still might."""
    start, more = r.i, False
    for option in options:
        r.i = start
        try:
            return _value(r, option)
        except _More:
            more = True
        except _Bad:
            continue
    raise _More if more else _Bad


def _choice(r: _Reader, values: list) -> None:
    rest = r.text[r.i :]
    for value in values:
        encoded = json.dumps(value)
        if rest.startswith(encoded):
            r.i += len(encoded)
            return
    if any(encoded.startswith(rest) for encoded in map(json.dumps, values)):
        raise _More
    raise _Bad


def _object(r: _Reader, schema: dict) -> None:
    properties, required = schema.get("properties", {}), set(schema.get("required", []))
    extra = schema.get("additionalProperties", not properties)  # named properties only, unless more are asked for
    closed = extra is False
    r.i += 1
    seen: set[str] = set()
    r.space()
    if r.peek() == "}":
        if required:
            raise _Bad
        r.i += 1
        return
    while True:
        r.space()
        start = r.i
        try:
            key = r.string()
        except _More:
            typed = r.text[start + 1 :]
            if closed and not any(k.startswith(typed) for k in properties if k not in seen):
                raise _Bad from None
            raise
        if key in seen or (closed and key not in properties):
            raise _Bad
        seen.add(key)
        r.space()
        if r.peek() != ":":
            raise _Bad
        r.i += 1
        _value(r, properties.get(key, extra if isinstance(extra, dict) else ANY))
        r.space()
        c = r.peek()
        r.i += 1
        if c == "}":
            if not required <= seen:
                raise _Bad
            return
        if c != "," or (closed and not set(properties) - seen):
            raise _Bad


def _array(r: _Reader, schema: dict) -> None:
    items, least, most = schema.get("items", ANY), schema.get("minItems", 0), schema.get("maxItems")
    r.i += 1
    r.space()
    count = 0
    if r.peek() == "]":
        if least > 0:
            raise _Bad
        r.i += 1
        return
    while True:
        _value(r, items)
        count += 1
        r.space()
        c = r.peek()
        r.i += 1
        if c == "]":
            if count < least:
                raise _Bad
            return
        if c != "," or (most is not None and count >= most):
            raise _Bad


def prefix_state(schema: dict, text: str) -> str:
    """COMPLETE (a whole document of `schema`, trailing whitespace allowed), PARTIAL (it can still
    become one) or INVALID."""
    r = _Reader(text)
    try:
        _value(r, schema)
        r.space()
    except _More:
        return PARTIAL
    except _Bad:
        return INVALID
    return COMPLETE if r.i == len(text) else INVALID


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


class SchemaLogitsProcessor:
    """A transformers logits processor (batch of one) allowing only tokens that keep the generated
    text a prefix of a document of `schema`; the end-of-sequence token only once it is complete."""

    def __init__(self, schema: dict, tokenizer, prompt_length: int):
        self.schema, self.tokenizer, self.prompt_length = schema, tokenizer, prompt_length
        self.eos = tokenizer.eos_token_id
        self.pieces: dict[int, str] = {}

    def _piece(self, token: int) -> str:
        if token not in self.pieces:
            self.pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return self.pieces[token]

    def allowed(self, text: str, order) -> list[int]:
        """Tokens (in `order`, most likely first) that keep `text` a valid prefix: the first CANDIDATES
        tried, then the rest of the vocabulary until one fits."""
        if prefix_state(self.schema, text) == COMPLETE:
            return [self.eos]
        found = []
        for n, token in enumerate(order):
            if n >= CANDIDATES and found:
                break
            token = int(token)
            piece = self._piece(token)
            if token == self.eos or not piece or "\ufffd" in piece or token in self.tokenizer.all_special_ids:
                continue
            if prefix_state(self.schema, text + piece) != INVALID:
                found.append(token)
        return found or [self.eos]

    def __call__(self, input_ids, scores):
        import torch

        text = self.tokenizer.decode(input_ids[0, self.prompt_length :], skip_special_tokens=True)
        keep = self.allowed(text, torch.argsort(scores[0], descending=True).tolist())
        masked = torch.full_like(scores, float("-inf"))
        masked[0, keep] = scores[0, keep]
        return masked
