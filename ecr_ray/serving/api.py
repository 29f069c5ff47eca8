"""The chat API's requests and answers, as the OpenAI API shapes them (plain; no Ray).

Requests are validated here: unknown fields, wrong roles, empty or oversized messages, too many
turns and values the server cannot honour are 400s with an OpenAI-style error body that names the
field, never a 500. FIELDS is the one list of what each OpenAI request field does here.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ecr_ray.config import ServeConfig

MAX_TOP_K = 50
MAX_BODY_BYTES = 1 << 20  # a request body above this is a 413 (40 messages of 2,000 characters fit with room to spare)

# Every field of OpenAI's chat completion request, what this server does with it (the README's table).
HONOURED, IGNORED, REFUSED = "honoured", "accepted and ignored", "refused"
FIELDS = {
    "messages": (HONOURED, "system, developer, user and assistant roles; text content or text content parts"),
    "model": (HONOURED, "must be the served model's id (serve.model_name) when given"),
    "stream": (HONOURED, "server-sent chunks; the first carries the `ecr` block"),
    "stream_options": (HONOURED, "`include_usage`: a last chunk with `usage` and no choices"),
    "max_tokens": (HONOURED, "caps the response (at most gen.decoding.max_new_tokens); finish_reason `length` when cut"),
    "max_completion_tokens": (HONOURED, "as max_tokens"),
    "temperature": (HONOURED, "0 decodes greedily, above 0 samples"),
    "top_p": (HONOURED, "nucleus mass when sampling"),
    "seed": (HONOURED, "seeds the sampling of that request"),
    "stop": (HONOURED, "up to 4 strings; the response ends before the first"),
    "presence_penalty": (HONOURED, "a repetition penalty of 1 + max(presence, frequency)/4 when positive"),
    "frequency_penalty": (HONOURED, "as presence_penalty"),
    "response_format": (HONOURED, "`text`, or `json_object`: the content is {\"response\", \"recommendations\"}; `json_schema` refused"),
    "n": (HONOURED, "1 only"),
    "logprobs": (REFUSED, "true is refused (false accepted)"),
    "top_logprobs": (REFUSED, "refused unless 0"),
    "logit_bias": (REFUSED, "refused unless empty"),
    "tools": (REFUSED, "refused unless empty: the recommender calls no tools"),
    "tool_choice": (IGNORED, "no tools are called"),
    "parallel_tool_calls": (IGNORED, "no tools are called"),
    "functions": (REFUSED, "refused unless empty (deprecated tools)"),
    "function_call": (IGNORED, "no functions are called"),
    "audio": (REFUSED, "text only"),
    "modalities": (REFUSED, "refused unless [\"text\"]"),
    "prediction": (IGNORED, "no predicted outputs"),
    "web_search_options": (REFUSED, "no web search"),
    "reasoning_effort": (IGNORED, "not a reasoning model"),
    "verbosity": (IGNORED, "the generator's length is max_tokens"),
    "metadata": (IGNORED, "nothing is stored"),
    "store": (IGNORED, "nothing is stored"),
    "user": (IGNORED, ""),
    "safety_identifier": (IGNORED, ""),
    "service_tier": (IGNORED, "one tier"),
    "prompt_cache_key": (IGNORED, ""),
    "prompt_cache_options": (IGNORED, ""),
    "prompt_cache_retention": (IGNORED, ""),
    "moderation": (IGNORED, "no moderation step"),
    "top_k": (HONOURED, "extension: recommended items returned (1-50, default serve.top_k)"),
}
ROLES = ("system", "developer", "user", "assistant")  # developer is OpenAI's newer name for system


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image or audio parts are refused by name in check_conversation
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self, where: str) -> str:
        """The content as one text (text parts joined by newlines); other parts are a 400 naming `where`."""
        if isinstance(self.content, str):
            return self.content
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise BadRequest(f"{where}.content[{j}] is a {part.type!r} part: only text parts are accepted", f"{where}.content[{j}]")
        return "\n".join(part.text for part in self.content)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="items to return (extension; default serve.top_k)")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class ChatRequest(RecommendRequest):
    """Every field of OpenAI's chat completion request (FIELDS says what each does here)."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    stream: bool | None = False
    stream_options: dict | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict] | None = None
    function_call: str | dict | None = None
    audio: dict | None = None
    modalities: list[str] | None = None
    prediction: dict | None = None
    web_search_options: dict | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict | None = None
    prompt_cache_retention: str | None = None
    moderation: dict | str | None = None

    def refuse_unsupported(self) -> None:
        """400s for values this server cannot honour, rather than answers that silently differ."""
        refusals = {
            "logprobs": self.logprobs and "log probabilities are not returned by this server",
            "top_logprobs": self.top_logprobs and "log probabilities are not returned by this server",
            "logit_bias": self.logit_bias and "logit_bias is not supported",
            "tools": self.tools and "tools are not supported: the recommender calls none",
            "functions": self.functions and "functions are not supported: the recommender calls none",
            "audio": self.audio and "audio output is not supported",
            "modalities": self.modalities and self.modalities != ["text"] and "only the text modality is supported",
            "web_search_options": self.web_search_options is not None and "web search is not supported",
            "response_format.type": self.response_format and self.response_format.type == "json_schema" and
            "json_schema is not supported by the ECR chat (its answer has a fixed shape): ask for json_object",
        }
        for param, message in refusals.items():
            if message:
                raise BadRequest(message, param, code="unsupported_value")

    def decoding(self) -> dict:
        """Per-request decoding (the generator applies it over the config's; rec/gen know nothing of HTTP)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise BadRequest("stop takes up to 4 non-empty strings", "stop")
        penalty = max(self.presence_penalty or 0.0, self.frequency_penalty or 0.0)
        options = {"max_new_tokens": self.max_completion_tokens or self.max_tokens, "temperature": self.temperature,
                   "top_p": self.top_p, "seed": self.seed, "stop": stops or None,
                   "repetition_penalty": 1.0 + penalty / 4 if penalty > 0 else None}
        return {k: v for k, v in options.items() if v is not None}

    @property
    def as_json(self) -> bool:
        return self.response_format is not None and self.response_format.type == "json_object"


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def check_conversation(request: RecommendRequest, cfg: ServeConfig) -> list[dict]:
    """The limits pydantic cannot know: the config's turn and size limits, a user message last."""
    dialogue = [m for m in request.messages if m.role in ("user", "assistant")]
    if len(dialogue) > cfg.max_turns:
        raise BadRequest(f"the conversation has {len(dialogue)} user and assistant messages; at most {cfg.max_turns} are accepted",
                         "messages")
    texts = [m.text(f"messages[{i}]") for i, m in enumerate(request.messages)]
    for i, text in enumerate(texts):
        if not text.strip():
            raise BadRequest(f"messages[{i}].content is empty", f"messages[{i}].content")
        if len(text) > cfg.max_message_chars:
            raise BadRequest(f"messages[{i}].content has {len(text)} characters; at most {cfg.max_message_chars} are accepted",
                             f"messages[{i}].content")
    if not dialogue or dialogue[-1].role != "user":
        raise BadRequest("the last message (system messages aside) should come from the user: the reply answers it", "messages")
    return [{"role": "system" if m.role == "developer" else m.role, "content": text} for m, text in zip(request.messages, texts)]


def error_body(message: str, param: str | None = None, code: str = "invalid_request", kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict|list|none)$|\[")  # pydantic's tag for the member of a union in `loc`


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic/FastAPI errors -> one readable line and the field it concerns."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not UNION_MEMBER.search(str(p))]
    param = ".".join(loc).replace(".[", "[") or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    if first.get("type") == "extra_forbidden":
        return f"unknown field {param!r}", param
    return f"{param or 'body'}: {first.get('msg')}", param


def completion(model: str, reply: dict, found: dict, as_json: bool) -> dict:
    """A chat.completion (`reply`: the generator's text, finish_reason and token counts) with the
    recommendation in the `ecr` extension field."""
    content = json_content(reply["text"], found) if as_json else reply["text"]
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": reply["finish_reason"]}],
            "usage": usage(reply), "ecr": found}


def json_content(text: str, found: dict) -> str:
    """The turn as a JSON object (response_format json_object): the response and the recommended titles."""
    return json.dumps({"response": text, "recommendations": [i["title"] for i in found["items"]]})


def json_pieces(found: dict) -> tuple[str, str]:
    """What goes before and after the streamed response text so that the whole content is json_content's."""
    before, after = json_content("\x00", found).split(json.dumps("\x00")[1:-1])
    return before, after


def usage(reply: dict) -> dict:
    return {"prompt_tokens": reply["prompt_tokens"], "completion_tokens": reply["completion_tokens"],
            "total_tokens": reply["prompt_tokens"] + reply["completion_tokens"]}


def chunk(rid: str, model: str, delta: dict | None, finish: str | None = None, **extra) -> str:
    """One server-sent event of a streamed chat.completion.chunk (no delta: the usage chunk, no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": choices, **extra}
    return f"data: {json.dumps(body)}\n\n"
