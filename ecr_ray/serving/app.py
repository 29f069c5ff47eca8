"""The ECR chat app on Ray Serve: an ingress (FastAPI) composing four deployments by handle.

ChatIngress -> EmotionClassifier -> Recommender (linker + recommender) -> Retriever -> Generator.
Each part is a deployment of its own, called by method through its handle, so serve/config.yaml gives
each its resources and autoscaling. `serve run serve/config.yaml`, or `build_app({"run_dir": ...})` from Python.
"""

import asyncio
import hmac
import json
import logging
import os
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from ecr_ray.config import REPO_ROOT
from ecr_ray.serving.batching import ContinuousBatcher
from ecr_ray.serving.api import (MAX_BODY_BYTES, BadRequest, ChatRequest, RecommendRequest, check_conversation, chunk, completion,
                                 error_body, json_pieces, usage, validation_message)
from ecr_ray.serving.components import EmotionDetector, ItemRecommender, KnowledgeRetriever, Responder, answer, load_run, recommend

RUN_DIR_ENV, DEFAULT_RUN_DIR = "ECR_RUN_DIR", "runs/tiny"
RETRIES = 4  # a request whose replica died is sent again, backing off 0.25-2 s (Serve routes it to a live or new one)
READY_PROBE_S, RETRY_AFTER_S = 0.5, 5  # how long a readiness probe waits for a part; what a 503 asks the client to wait
PAGE = Path(__file__).with_name("page.html")
SERVE_CONFIG = REPO_ROOT / "serve" / "config.yaml"
log = logging.getLogger("ecr_ray.serve")


class _OneCallAtATime:
    """A part in a replica, called one at a time on its own thread (parts are not thread-safe; replicas
    add throughput) with serve.threads torch threads: a thread not told runs torch on one core, since Ray
    sets OMP_NUM_THREADS=1 in its workers. The replica is ready once the part has loaded; `ready` answers then."""

    def __init__(self, part: type, run_dir: str, overrides: list[str]):
        import concurrent.futures

        import torch

        cfg, run = load_run(run_dir, overrides)
        self.part = part(run, overrides, threads=cfg.serve.threads)
        self.thread = concurrent.futures.ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(cfg.serve.threads,))

    def ready(self) -> bool:
        return True

    async def _call(self, method, *args):
        return await asyncio.get_running_loop().run_in_executor(self.thread, method, *args)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class EmotionClassifier(_OneCallAtATime):
    def __init__(self, run_dir: str, overrides: list[str]):
        super().__init__(EmotionDetector, run_dir, overrides)

    async def detect(self, texts: list[str]) -> list[dict]:
        return await self._call(self.part.detect, texts)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class Recommender(_OneCallAtATime):
    def __init__(self, run_dir: str, overrides: list[str]):
        super().__init__(ItemRecommender, run_dir, overrides)

    async def recommend(self, messages: list[dict], user_probs: list[list[float]], top_k: int, user_stances: list[list[dict]] | None = None) -> dict:
        return await self._call(self.part.recommend, messages, user_probs, top_k, user_stances)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class Retriever(_OneCallAtATime):
    def __init__(self, run_dir: str, overrides: list[str]):
        super().__init__(KnowledgeRetriever, run_dir, overrides)

    async def knowledge(self, item: int) -> dict:
        return await self._call(self.part.knowledge, item)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class Generator:
    """The responder, decoding up to serve.max_batch requests together; a request joins the running
    batch at its next step (`ContinuousBatcher`)."""

    def __init__(self, run_dir: str, overrides: list[str]):
        cfg, run = load_run(run_dir, overrides)
        self.part = Responder(run, overrides, threads=cfg.serve.threads)
        self.batcher = ContinuousBatcher(self.part.chat_batch, cfg.serve.max_batch, cfg.serve.stream_interval_ms / 1000)

    def ready(self) -> bool:
        return True

    async def stream(self, messages: list[dict], title: str, knowledge: dict, options: dict):
        async for out in self.batcher.stream(self.part.row(messages, title, knowledge), options):
            yield out

    async def reply(self, messages: list[dict], title: str, knowledge: dict, options: dict) -> dict:
        *pieces, end = [out async for out in self.stream(messages, title, knowledge, options)]
        return {"text": "".join(pieces), **end}


class HandleParts:
    """The parts behind their deployment handles, with the interface `answer` takes (LocalParts' twin);
    a call whose replica died is sent again."""

    def __init__(self, classifier, recommender, retriever, generator):
        self.classifier, self.recommender, self.retriever, self.generator = classifier, recommender, retriever, generator
        self.loaded = dict.fromkeys(self.named(), False)

    def named(self) -> dict:
        return {"emotion classifier": self.classifier, "recommender": self.recommender, "retriever": self.retriever,
                "generator": self.generator}

    async def ready(self) -> dict[str, bool]:
        """Which parts have a replica that answers (probed until each has answered once)."""
        async def probe(handle) -> bool:
            try:
                return await asyncio.wait_for(handle.ready.remote(), READY_PROBE_S)
            except Exception:  # noqa: BLE001 - a part still loading (or failing) is not ready, whatever the reason
                return False

        waiting = {name: h for name, h in self.named().items() if not self.loaded[name]}
        for name, up in zip(waiting, await asyncio.gather(*map(probe, waiting.values()))):
            self.loaded[name] = up
        return dict(self.loaded)

    async def detect(self, texts: list[str]) -> list[dict]:
        return await _retry(lambda: self.classifier.detect.remote(texts))

    async def recommend(self, messages: list[dict], user_probs: list[list[float]], top_k: int, user_stances: list[list[dict]] | None = None) -> dict:
        return await _retry(lambda: self.recommender.recommend.remote(messages, user_probs, top_k, user_stances))

    async def knowledge(self, item: int) -> dict:
        return await _retry(lambda: self.retriever.knowledge.remote(item))

    async def reply(self, messages: list[dict], title: str, knowledge: dict, options: dict | None = None) -> dict:
        return await _retry(lambda: self.generator.reply.remote(messages, title, knowledge, options))

    async def stream(self, messages: list[dict], title: str, knowledge: dict, options: dict | None = None):
        async for piece in self.generator.options(stream=True).stream.remote(messages, title, knowledge, options):
            yield piece


async def _retry(send):
    import ray.exceptions as rex

    for attempt in range(RETRIES + 1):
        try:
            return await send()
        except (rex.RayActorError, rex.ActorUnavailableError) as err:
            if attempt == RETRIES:
                raise
            log.warning("a replica failed (%s); sending the request again", type(err).__name__)
            await asyncio.sleep(0.25 * 2**attempt)


async def timed(seconds: float, coroutine):
    """The coroutine's result, or a 504 once it has taken `seconds` (serve.request_timeout_s)."""
    try:
        return await asyncio.wait_for(coroutine, seconds)
    except TimeoutError:
        raise BadRequest(f"the request took longer than {seconds:g} s (serve.request_timeout_s)", None, 504, "timeout") from None


api = FastAPI(title="ecr-ray: an empathetic conversational recommender")


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    message, param = validation_message(exc.errors())
    return JSONResponse(error_body(message, param), status_code=400)


@api.exception_handler(BadRequest)
async def _bad(request: Request, exc: BadRequest):
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    return JSONResponse(error_body(str(exc), exc.param, exc.code, kind), status_code=exc.status, headers=headers)


HTTP_ERRORS = {400: ("the request body could not be read as JSON in UTF-8", "invalid_json"), 404: ("no such path", "not_found"),
               405: ("this method is not allowed on this path", "method_not_allowed")}


@api.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException):
    """Starlette's own errors (unknown path, wrong method, a body it cannot parse) in the OpenAI shape."""
    message, code = HTTP_ERRORS.get(exc.status_code, (str(exc.detail), "http_error"))
    if exc.status_code in (404, 405):
        message = f"{message}: {request.method} {request.url.path}"
    return JSONResponse(error_body(message, None, code), status_code=exc.status_code, headers=exc.headers)


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is a 413 in the OpenAI shape, whether it says its
    length (refused before reading) or streams in chunks (refused once the limit is passed)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse(error_body(f"the request body is larger than {self.limit} bytes", None, "request_too_large"), 413)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        seen, answered = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge  # FastAPI may turn this into a 400 of its own: `sent` answers 413 instead
            return message

        async def sent(message):
            nonlocal answered
            if seen <= self.limit:
                await send(message)
            elif not answered:
                answered = True
                await too_large(scope, receive, send)

        try:
            await self.app(scope, counted, sent)
        except _TooLarge:
            if not answered:
                await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


api.add_middleware(BodyLimit)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class ChatIngress:
    def __init__(self, classifier, recommender, retriever, generator, run_dir: str, overrides: list[str], token: str | None = None):
        cfg, _ = load_run(run_dir, overrides)
        self.cfg = cfg.serve
        self.parts = HandleParts(classifier, recommender, retriever, generator)
        self.token = token or os.environ.get(self.cfg.token_env) or None  # the builder's environment, else the replica's

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise BadRequest(f"a valid bearer token is required (Authorization: Bearer <${self.cfg.token_env}>)", None, 401,
                             "invalid_api_key")


    @api.get("/", response_class=HTMLResponse)
    def page(self) -> str:
        return PAGE.read_text().replace("__MAX_TURNS__", str(self.cfg.max_turns)).replace("__MAX_MESSAGE_CHARS__", str(self.cfg.max_message_chars))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Alive (always 200 while the ingress runs), and which parts can answer."""
        parts = await self.parts.ready()
        return {"status": "ok", "model": self.cfg.model_name, "ready": all(parts.values()), "parts": parts}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """200 once every part has loaded; 503 with Retry-After until then (a load balancer's probe)."""
        parts = await self.parts.ready()
        ready = all(parts.values())
        return JSONResponse({"status": "ready" if ready else "loading", "parts": parts}, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)})

    async def _require_ready(self) -> None:
        parts = await self.parts.ready()
        if not all(parts.values()):
            loading = ", ".join(name for name, up in parts.items() if not up)
            raise BadRequest(f"the models are still loading ({loading}); retry in {RETRY_AFTER_S} s", None, 503, "not_ready")

    @api.get("/v1/models")
    def models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "ecr-ray"}]}

    @api.post("/recommend")
    async def recommend(self, body: RecommendRequest, request: Request) -> dict:
        self._authorize(request)
        messages = check_conversation(body, self.cfg)
        await self._require_ready()
        return await timed(self.cfg.request_timeout_s, recommend(self.parts, messages, body.top_k or self.cfg.top_k))

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request):
        self._authorize(request)
        if body.model and body.model != self.cfg.model_name:
            raise BadRequest(f"model {body.model!r} is not served here; this server serves {self.cfg.model_name!r}", "model", 404,
                             "model_not_found")
        messages = check_conversation(body, self.cfg)
        body.refuse_unsupported()
        options = body.decoding()
        await self._require_ready()
        if body.stream:
            return StreamingResponse(self._stream(messages, body, options), media_type="text/event-stream")

        async def turn():
            found, args = await answer(self.parts, messages, body.top_k or self.cfg.top_k)
            return completion(self.cfg.model_name, await self.parts.reply(*args, options), found, body.as_json)

        return await timed(self.cfg.request_timeout_s, turn())

    async def _stream(self, messages: list[dict], body: ChatRequest, options: dict):
        """The recommendation in the first chunk's `ecr` field, then the response as it is decoded, the
        finish reason, and with stream_options.include_usage a last chunk with the token counts."""
        rid, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", self.cfg.model_name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.request_timeout_s
        try:
            found, args = await asyncio.wait_for(answer(self.parts, messages, body.top_k or self.cfg.top_k), self.cfg.request_timeout_s)
            before, after = json_pieces(found) if body.as_json else ("", "")
            yield chunk(rid, name, {"role": "assistant", "content": before}, ecr=found)
            pieces, end = self.parts.stream(*args, options), {}
            while True:
                try:
                    piece = await asyncio.wait_for(anext(pieces), max(0.0, deadline - loop.time()))
                except StopAsyncIteration:
                    break
                if isinstance(piece, dict):  # the generator's last word: finish reason and token counts
                    end = piece
                else:
                    yield chunk(rid, name, {"content": json.dumps(piece)[1:-1] if body.as_json else piece})
            if after:
                yield chunk(rid, name, {"content": after})
            yield chunk(rid, name, {}, end.get("finish_reason", "stop"))
            if (body.stream_options or {}).get("include_usage") and end:
                yield chunk(rid, name, None, usage=usage(end))
        except TimeoutError:
            yield f"data: {json.dumps(error_body(f'the request took longer than {self.cfg.request_timeout_s:g} s', None, 'timeout'))}\n\n"
        yield "data: [DONE]\n\n"


def build_app(args: dict):
    """`serve run serve/config.yaml` (args: run_dir, overrides) or `serve run ecr_ray.serving.app:build_app run_dir=DIR`.

    The run directory: args.run_dir, else $ECR_RUN_DIR, else runs/tiny (what `ecr-ray run --config tiny` trains).
    """
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [o for o in overrides.split(",") if o]
    return _graph(args.get("run_dir"), overrides, {})


def _graph(run_dir: str | None, overrides: list[str], options: dict[str, dict]):
    run_dir = str(run_dir or os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)
    if "://" not in run_dir:
        run_dir = str(Path(run_dir).resolve())
    cfg, _ = load_run(run_dir, overrides)  # a clear error here, naming the command to run, not inside a replica
    part = lambda deployment: deployment.options(**options.get(deployment.name, {})).bind(run_dir, overrides)  # noqa: E731
    ingress = ChatIngress.options(**options.get("ChatIngress", {}))
    return ingress.bind(part(EmotionClassifier), part(Recommender), part(Retriever), part(Generator), run_dir=run_dir,
                        overrides=overrides, token=os.environ.get(cfg.serve.token_env))


def deploy(run_dir: str, port: int | None = None, options: dict[str, dict] | None = None, overrides: list[str] = (),
           config: Path = SERVE_CONFIG) -> str:
    """Run the app as `serve run serve/config.yaml` does (its HTTP options, resources and autoscaling),
    on the connected Ray, from Python (tests, benchmarks); `options` changes deployments, `overrides`
    the run's config. Returns the base URL."""
    import yaml

    spec = yaml.safe_load(Path(config).read_text())
    app = spec["applications"][0]
    http = {**spec.get("http_options", {}), **({"port": port} if port else {})}
    serve.start(http_options=http)
    deployments = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}
    for name, extra in (options or {}).items():
        deployments[name] = {**deployments.get(name, {}), **extra}
    serve.run(_graph(run_dir, [*(app.get("args", {}).get("overrides") or []), *overrides], deployments), name=app["name"],
              route_prefix=app["route_prefix"])
    return f"http://{http['host']}:{http['port']}"
