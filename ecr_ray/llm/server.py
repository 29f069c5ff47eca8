"""An OpenAI-compatible chat server on Ray Serve, over a transformers causal LM.

GET /v1/models, POST /v1/chat/completions (chat template, temperature, top_p, max_tokens, stop,
seed, stream, usage; response_format json_object / json_schema enforced by constrained decoding
(llguidance, llm/constrained.py); logprobs and top_logprobs in plain answers). Offline default: the packaged SmolLM2-135M-Instruct. Run it with
`serve run ecr_ray.llm.server:build_app model=smollm2-135m-instruct`, or from Python with
`start_llm_server(cfg, model)` (LLM annotation does when `emotion.llm.base_url` is unset; the judge
runs its model in-process instead, in `eval.score_pool`'s actors).
"""

import asyncio
import json
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

DEFAULT_MAX_TOKENS = 256
APP_NAME = "llm"


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    response_format: dict | None = None  # {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema"}}
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


api = FastAPI(title="ecr-ray LLM")


@api.exception_handler(HTTPException)
async def _openai_error(request, exc: HTTPException) -> JSONResponse:
    """Errors in the OpenAI shape, so clients show the message rather than only the status."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse({"error": {"message": str(exc.detail), "type": kind, "param": None, "code": None}}, status_code=exc.status_code)


@serve.deployment(max_ongoing_requests=8)
@serve.ingress(api)
class ChatLLM:
    def __init__(self, model: str, allow_download: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ecr_ray.models import resolve_model

        torch.set_num_threads(1)
        path = resolve_model(model, allow_download)
        self.name = model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.lock = threading.Lock()  # one generation at a time per replica; replicas add throughput

    @api.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "ecr-ray"}]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: ChatRequest):
        if request.model and request.model != self.name:
            raise HTTPException(404, f"model {request.model!r} is not served here; this server serves {self.name!r}")
        from transformers import LogitsProcessorList

        from ecr_ray.llm.constrained import SchemaLogitsProcessor, response_schema, schema_grammar

        try:
            schema = response_schema(request.response_format)
            grammar = None if schema is None else schema_grammar(schema)  # one that cannot be enforced is refused, with the reason
        except (ValueError, KeyError, AttributeError) as err:
            raise HTTPException(400, f"response_format: {err}") from None
        if request.logprobs and request.stream:
            raise HTTPException(400, "logprobs are given in plain answers only: ask without stream")
        if request.top_logprobs and not request.logprobs:
            raise HTTPException(400, "top_logprobs needs logprobs: true")
        inputs = self.tokenizer.apply_chat_template(
            [m.model_dump() for m in request.messages], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        kwargs = self._generation_kwargs(request, stops)
        if grammar is not None:
            kwargs["logits_processor"] = LogitsProcessorList([SchemaLogitsProcessor(grammar, self.tokenizer, prompt_tokens)])
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if request.stream:
            return StreamingResponse(self._stream(inputs, kwargs, stops, rid, created), media_type="text/event-stream")
        out = await asyncio.to_thread(self._generate, inputs, {**kwargs, "return_dict_in_generate": True, "output_logits": request.logprobs})
        output = out.sequences[0, prompt_tokens:]
        text, stopped = self._cut(self.tokenizer.decode(output, skip_special_tokens=True), stops)
        finish = "stop" if stopped or len(output) < kwargs["max_new_tokens"] else "length"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                  "logprobs": {"content": self._logprobs(output, out.logits, len(text), request.top_logprobs or 0)} if request.logprobs else None}
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": self.name, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(output), "total_tokens": prompt_tokens + len(output)},
        }

    def _logprobs(self, output, logits, length: int, top: int) -> list[dict]:
        """OpenAI's per-token logprobs (of the model's own distribution, before sampling settings and
        constraints) for the tokens that make up the first `length` characters of the answer."""
        import torch

        entry = lambda token, logprob: {"token": (piece := self.tokenizer.decode([token])), "logprob": float(logprob),  # noqa: E731
                                        "bytes": list(piece.encode())}
        out, text = [], ""
        for token, step in zip(output.tolist(), logits, strict=False):
            if len(text) >= length or token in self.tokenizer.all_special_ids:
                break
            lp = torch.log_softmax(step[0].float(), -1)
            best = torch.topk(lp, top) if top else None
            out.append({**entry(token, lp[token]), "top_logprobs": [entry(int(t), v) for v, t in zip(*best, strict=True)] if best else []})
            text += out[-1]["token"]
        return out

    def _generation_kwargs(self, request: ChatRequest, stops: list[str]) -> dict:
        import torch

        kwargs = {"max_new_tokens": request.max_tokens or DEFAULT_MAX_TOKENS, "pad_token_id": self.tokenizer.eos_token_id,
                  "do_sample": request.temperature > 0}
        if request.temperature > 0:
            kwargs.update(temperature=request.temperature, top_p=request.top_p)
            if request.seed is not None:
                torch.manual_seed(request.seed)
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        return kwargs

    @staticmethod
    def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
        """The text up to the first stop string (excluded, as the OpenAI API does)."""
        positions = [text.find(s) for s in stops if s and s in text]
        return (text[: min(positions)], True) if positions else (text, False)

    def _generate(self, inputs, kwargs):
        with self.lock:
            return self.model.generate(**inputs, **kwargs)

    async def _stream(self, inputs, kwargs, stops, rid, created):
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        done = asyncio.ensure_future(asyncio.to_thread(self._generate, inputs, {**kwargs, "streamer": streamer}))
        chunk = lambda delta, finish=None: "data: " + json.dumps({  # noqa: E731
            "id": rid, "object": "chat.completion.chunk", "created": created, "model": self.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"
        yield chunk({"role": "assistant", "content": ""})
        text, stopped = "", False
        while (piece := await asyncio.to_thread(next, streamer, None)) is not None:
            if stopped:
                continue  # drain: the generation ends by itself (stop_strings) or at max_tokens
            cut, stopped = self._cut(text + piece, stops)
            if cut[len(text):]:
                yield chunk({"content": cut[len(text):]})
            text = cut
        await done
        yield chunk({}, "stop")
        yield "data: [DONE]\n\n"


def build_app(args: dict):
    """`serve run ecr_ray.llm.server:build_app model=NAME replicas=N`"""
    return ChatLLM.options(num_replicas=int(args.get("replicas", 1))).bind(
        args.get("model", "smollm2-135m-instruct"), str(args.get("allow_download", "")).lower() == "true")


def start_llm_server(cfg, model: str, client_cpus: float = 0.0) -> str:
    """Deploy the server for `model` on the connected Ray cluster (cfg.llm_server); returns its OpenAI base URL.

    `client_cpus`: what the actors that will call it need; replicas that leave them no CPU would hang the run.
    """
    import urllib.request

    import ray

    from ecr_ray.models import resolve_model

    server = cfg.llm_server
    need, total = server.replicas * server.replica_cpus, ray.cluster_resources().get("CPU", 0)
    if need + client_cpus > total:
        raise RuntimeError(f"the local LLM server needs {need:g} CPUs (llm_server.replicas={server.replicas} x "
                           f"replica_cpus={server.replica_cpus:g}) and its callers {client_cpus:g}, but the Ray cluster has "
                           f"{total:g}: lower llm_server.replicas or llm_server.replica_cpus")
    resolve_model(model, cfg.models.allow_download)  # build or fail here, not inside a replica
    serve.start(http_options={"host": server.host, "port": server.port})
    app = ChatLLM.options(num_replicas=server.replicas, ray_actor_options={"num_cpus": server.replica_cpus}).bind(
        model, cfg.models.allow_download)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    base = f"http://{server.host}:{server.port}"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(f"{base}/v1/models", timeout=5)
            return f"{base}/v1"
        except OSError:
            if time.time() > deadline:
                stop_llm_server()  # never leave a replica holding CPUs behind
                raise RuntimeError(f"the local LLM server did not answer at {base}/v1/models within 300 s (Ray Serve keeps "
                                   "the HTTP port it first started on in a Ray session)") from None
            time.sleep(1)


def stop_llm_server() -> None:
    serve.delete(APP_NAME)
