"""The chat API's requests and answers, as the OpenAI API shapes them (plain; no Ray).

Requests are validated here: unknown fields, wrong roles, empty or oversized messages and too many
turns are 400s with an OpenAI-style error body that names the field, never a 500.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ecr_ray.config import ServeConfig

MAX_TOP_K = 50


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="items to return (extension; default serve.top_k)")


class ChatRequest(RecommendRequest):
    """The OpenAI fields a client may send; sampling fields are accepted and decoding stays the config's."""
    model: str | None = None
    stream: bool = False
    stream_options: dict | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=1)
    seed: int | None = None
    user: str | None = None


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def check_conversation(request: RecommendRequest, cfg: ServeConfig) -> list[dict]:
    """The limits pydantic cannot know: the config's turn and size limits, a user message last."""
    dialogue = [m for m in request.messages if m.role != "system"]
    if len(dialogue) > cfg.max_turns:
        raise BadRequest(f"the conversation has {len(dialogue)} user and assistant messages; at most {cfg.max_turns} are accepted",
                         "messages")
    for i, m in enumerate(request.messages):
        if not m.content.strip():
            raise BadRequest(f"messages[{i}].content is empty", f"messages[{i}].content")
        if len(m.content) > cfg.max_message_chars:
            raise BadRequest(f"messages[{i}].content has {len(m.content)} characters; at most {cfg.max_message_chars} are accepted",
                             f"messages[{i}].content")
    if not dialogue or dialogue[-1].role != "user":
        raise BadRequest("the last message (system messages aside) should come from the user: the reply answers it", "messages")
    return [{"role": m.role, "content": m.content} for m in request.messages]


def error_body(message: str, param: str | None = None, code: str = "invalid_request", kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic/FastAPI errors -> one readable line and the field it concerns."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc).replace(".[", "[") or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    if first.get("type") == "extra_forbidden":
        return f"unknown field {param!r}", param
    return f"{param or 'body'}: {first.get('msg')}", param


def completion(model: str, text: str, found: dict) -> dict:
    """A chat.completion with the recommendation in the `ecr` extension field."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "ecr": found}


def chunk(rid: str, model: str, delta: dict, finish: str | None = None, **extra) -> str:
    """One server-sent event of a streamed chat.completion.chunk."""
    body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n"
