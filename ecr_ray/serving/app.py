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

from ecr_ray.config import REPO_ROOT
from ecr_ray.rundir import RunDir
from ecr_ray.serving.api import (BadRequest, ChatRequest, RecommendRequest, check_conversation, chunk, completion, error_body,
                                 validation_message)
from ecr_ray.serving.components import EmotionDetector, ItemRecommender, KnowledgeRetriever, Responder, answer, load_run, recommend

RUN_DIR_ENV, DEFAULT_RUN_DIR = "ECR_RUN_DIR", "runs/tiny"
RETRIES = 4  # a request whose replica died is sent again, backing off 0.25-2 s (Serve routes it to a live or new one)
PAGE = Path(__file__).with_name("page.html")
SERVE_CONFIG = REPO_ROOT / "serve" / "config.yaml"
log = logging.getLogger("ecr_ray.serve")


class _OneCallAtATime:
    """A part in a replica, called one at a time (parts are not thread-safe; replicas add throughput)."""

    def __init__(self, part):
        self.part = part
        self.lock = asyncio.Lock()

    async def _call(self, method, *args):
        async with self.lock:
            return await asyncio.to_thread(method, *args)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class EmotionClassifier(_OneCallAtATime):
    def __init__(self, run_dir: str, overrides: list[str]):
        super().__init__(EmotionDetector(RunDir(run_dir), overrides))

    async def detect(self, texts: list[str]) -> list[dict]:
        return await self._call(self.part.detect, texts)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class Recommender(_OneCallAtATime):
    def __init__(self, run_dir: str, overrides: list[str]):
        super().__init__(ItemRecommender(RunDir(run_dir), overrides))

    async def recommend(self, messages: list[dict], user_probs: list[list[float]], top_k: int) -> dict:
        return await self._call(self.part.recommend, messages, user_probs, top_k)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class Retriever(_OneCallAtATime):
    def __init__(self, run_dir: str, overrides: list[str]):
        super().__init__(KnowledgeRetriever(RunDir(run_dir), overrides))

    async def knowledge(self, item: int) -> dict:
        return await self._call(self.part.knowledge, item)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class Generator(_OneCallAtATime):
    def __init__(self, run_dir: str, overrides: list[str]):
        super().__init__(Responder(RunDir(run_dir), overrides))

    async def respond(self, messages: list[dict], title: str, knowledge: dict) -> str:
        return await self._call(self.part.respond, messages, title, knowledge)

    async def stream(self, messages: list[dict], title: str, knowledge: dict):
        async with self.lock:
            pieces = self.part.stream(messages, title, knowledge)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                yield piece


class HandleParts:
    """The parts behind their deployment handles, with the interface `answer` takes (LocalParts' twin);
    a call whose replica died is sent again."""

    def __init__(self, classifier, recommender, retriever, generator):
        self.classifier, self.recommender, self.retriever, self.generator = classifier, recommender, retriever, generator

    async def detect(self, texts: list[str]) -> list[dict]:
        return await _retry(lambda: self.classifier.detect.remote(texts))

    async def recommend(self, messages: list[dict], user_probs: list[list[float]], top_k: int) -> dict:
        return await _retry(lambda: self.recommender.recommend.remote(messages, user_probs, top_k))

    async def knowledge(self, item: int) -> dict:
        return await _retry(lambda: self.retriever.knowledge.remote(item))

    async def respond(self, messages: list[dict], title: str, knowledge: dict) -> str:
        return await _retry(lambda: self.generator.respond.remote(messages, title, knowledge))

    async def stream(self, messages: list[dict], title: str, knowledge: dict):
        async for piece in self.generator.options(stream=True).stream.remote(messages, title, knowledge):
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
    return JSONResponse(error_body(str(exc), exc.param, exc.code), status_code=exc.status)


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
        return PAGE.read_text()

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.cfg.model_name}

    @api.get("/v1/models")
    def models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "ecr-ray"}]}

    @api.post("/recommend")
    async def recommend(self, body: RecommendRequest, request: Request) -> dict:
        self._authorize(request)
        messages = check_conversation(body, self.cfg)
        return await timed(self.cfg.request_timeout_s, recommend(self.parts, messages, body.top_k or self.cfg.top_k))

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request):
        self._authorize(request)
        if body.model and body.model != self.cfg.model_name:
            raise BadRequest(f"model {body.model!r} is not served here; this server serves {self.cfg.model_name!r}", "model", 404,
                             "model_not_found")
        messages = check_conversation(body, self.cfg)
        if body.stream:
            return StreamingResponse(self._stream(messages, body.top_k), media_type="text/event-stream")

        async def turn():
            found, args = await answer(self.parts, messages, body.top_k or self.cfg.top_k)
            return completion(self.cfg.model_name, await self.parts.respond(*args), found)

        return await timed(self.cfg.request_timeout_s, turn())

    async def _stream(self, messages: list[dict], top_k: int | None):
        """The recommendation in the first chunk's `ecr` field, then the response as it is decoded."""
        rid, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", self.cfg.model_name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.request_timeout_s
        try:
            found, args = await asyncio.wait_for(answer(self.parts, messages, top_k or self.cfg.top_k), self.cfg.request_timeout_s)
            yield chunk(rid, name, {"role": "assistant", "content": ""}, ecr=found)
            pieces = self.parts.stream(*args)
            while True:
                try:
                    piece = await asyncio.wait_for(anext(pieces), max(0.0, deadline - loop.time()))
                except StopAsyncIteration:
                    break
                yield chunk(rid, name, {"content": piece})
            yield chunk(rid, name, {}, "stop")
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
