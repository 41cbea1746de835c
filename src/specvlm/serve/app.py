"""The HTTP side: FastAPI routes in OpenAI's chat completions dialect, on top of the model worker.

    POST /v1/chat/completions   (stream or not)         GET /v1/models, /v1/models/{id}
    GET  /health (liveness: 503 when the worker died or hangs)   GET /ready (readiness: 503 while the queue is full)
    GET  /metrics (Prometheus text)                     GET /openapi.json (the API's schema)

A request is parsed and checked (400 / 401 / 404 / 413 before it ever waits), its media written to its own temporary
folder, then queued (429 when the queue is full). Its HTTP status is decided once the worker has built its inputs:
bad media is a 400 even for `stream: true`. After that a streamed answer goes out as Server-Sent Events; a client that
disconnects, or a request past its deadline, stops the worker at its next round.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from .errors import BODY_TIMEOUT_S, APIError, bad_request, body_timeout, internal, loggable, timed_out
from .media import materialize
from .metrics import Metrics
from .openapi import openapi_schema
from .schema import MAX_IMAGES, ChatRequest, Decoding, chat_turn, decoding, parse_request
from .worker import STUCK_TIMEOUT_S, Delta, Failed, Finished, Job, Worker

log = logging.getLogger("specvlm.serve")
CHAT_PATH = "/v1/chat/completions"
DRAIN_FACTOR = 4  # see read_json
POLL_S = 0.2  # how often a waiting handler looks for a gone client or a passed deadline


@dataclass(frozen=True)
class Settings:
    model_name: str  # the id clients send as "model"
    defaults: Decoding  # the server's decoding options: what a request leaves out
    temp_root: Path  # each request's media folder is made (and removed) below it;
    # the server removes it when it stops
    api_key: str | None = None
    allowed_media: Path | None = None  # resolved --allowed-local-media-path
    max_queue: int = 64
    max_batch: int = 16
    request_timeout: float | None = None
    max_request_bytes: int = 64 << 20
    local_only: bool = False  # bound to a loopback address: requests must name a loopback Host (DNS rebinding)
    max_images: int = MAX_IMAGES
    stuck_timeout: float = STUCK_TIMEOUT_S


class ClientGone(Exception):
    pass


def create_app(engine, settings: Settings) -> FastAPI:
    metrics = Metrics()
    worker = Worker(engine, settings.max_queue, metrics, settings.max_batch, settings.stuck_timeout)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:  # here, not after uvicorn returns: on SIGTERM uvicorn re-raises the signal once shut down
            worker.stop()
            shutil.rmtree(settings.temp_root, ignore_errors=True)

    app = FastAPI(title="specvlm serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker, app.state.metrics = worker, metrics

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_schema(app, CHAT_PATH, settings.model_name, __version__)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def error_response(request: Request, err: APIError) -> JSONResponse:
        log.warning(
            "%s %s -> %d %s",
            loggable(request.method, 16),
            loggable(request.url.path),
            err.status,
            loggable(err.message),
        )
        if request.url.path == CHAT_PATH:
            metrics.request(err.status)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, err: APIError):
        return error_response(request, err)

    if settings.local_only:
        app.add_middleware(LoopbackHostOnly, refuse=error_response)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, err: HTTPException):  # unknown route, wrong method
        return error_response(
            request, APIError(err.status_code, str(err.detail), code="not_found" if err.status_code == 404 else None)
        )

    @app.exception_handler(Exception)
    async def on_bug(request: Request, err: Exception):
        log.exception("%s %s failed", loggable(request.method, 16), loggable(request.url.path))
        return error_response(request, internal(err))

    async def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(
                401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    @app.get("/health")
    async def health():
        """Liveness: 200 while the model worker runs and no step or input preparation hangs, else 503 (restart)."""
        problem = worker.problem()
        if problem is None:
            return {"status": "ok"}
        return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)

    @app.get("/ready")
    async def ready():
        """Readiness: 200 while a request would be taken (the worker is healthy and the queue has room), else 503
        (send it elsewhere for now)."""
        problem = worker.problem() or (None if worker.has_room() else "the queue is full")
        if problem is None:
            return {"status": "ready"}
        return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(
            metrics.render(worker.queue_length, worker.running), media_type="text/plain; version=0.0.4"
        )

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "specvlm"}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}", dependencies=[Depends(authorized)])
    async def model(model: str):
        if model != settings.model_name:
            raise unknown_model(model, settings.model_name)
        return model_card()

    async def next_event(job: Job, request: Request, watch_client: bool):
        """The job's next event. Stops the job when the deadline passes (504) or, with `watch_client`, when the
        client has gone: looked for every POLL_S seconds, also while events flow (a non-streamed answer's client
        that left used to be seen only after a pause in the tokens). A streamed response watches through Starlette
        instead, which cancels the stream."""
        while True:
            if watch_client and time.monotonic() - job.client_seen >= POLL_S:
                job.client_seen = time.monotonic()
                if await request.is_disconnected():
                    worker.cancel(job, "disconnect")
                    raise ClientGone()
            try:
                return await asyncio.wait_for(job.events.get(), timeout=POLL_S)
            except asyncio.TimeoutError:
                if job.stop_reason() == "timeout":
                    worker.cancel(job, "timeout")
                    raise timed_out(job.timeout) from None

    @app.post(CHAT_PATH, dependencies=[Depends(authorized)])
    async def chat_completions(request: Request):
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":  # a web page's form or text/plain POST never gets this far (CSRF)
            raise APIError(
                415, "send the request as JSON (Content-Type: application/json)", code="unsupported_media_type"
            )
        place = worker.admit()  # a place in the queue (or a 429) before the body is read, decoded and written
        try:
            chat = parse_request(await read_json(request, settings.max_request_bytes))
            if chat.model != settings.model_name:
                raise unknown_model(chat.model, settings.model_name)
            turn, options = chat_turn(chat.messages, settings.max_images), decoding(chat, settings.defaults)
            reply, streamed = Reply(chat, settings.model_name), chat.stream
            del chat  # from here the request holds its media as files, not as the body's base64 strings
            workdir = Path(tempfile.mkdtemp(prefix="request-", dir=settings.temp_root))
            try:
                files = await asyncio.to_thread(materialize, turn, workdir, settings.allowed_media)
                del turn
                job = Job(files, options, settings.request_timeout, workdir, asyncio.get_running_loop())
                worker.submit(job, place)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)  # before the place is freed: see Worker.admit
                raise
        except ClientGone:  # it left while sending its body
            metrics.request(499)
            return Response(status_code=499)
        finally:
            worker.release(place)
        try:
            first = await next_event(job, request, watch_client=True)
            if isinstance(first, Failed):
                raise first.error
            if streamed:  # counted in /metrics when it ends: 200, the status of its error event, or 499
                return StreamingResponse(
                    stream(job, request, reply),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            while not isinstance(event := await next_event(job, request, watch_client=True), Finished):
                if isinstance(event, Failed):
                    raise event.error
                reply.add(event)
        except ClientGone:
            metrics.request(499)  # nginx's "client closed request": nobody reads this response
            return Response(status_code=499)
        metrics.request(200)
        log.info("200 chat: %s", reply.summary(event))
        return JSONResponse(reply.completion(event))

    async def stream(job: Job, request: Request, reply: Reply):
        finished = False
        try:
            yield sse(reply.chunk({"role": "assistant", "content": ""}))
            while True:
                try:
                    event = await next_event(job, request, watch_client=False)
                except APIError as err:
                    event = Failed(err)
                if isinstance(event, Delta):
                    yield sse(reply.chunk({"content": event.text}, logprobs=event.logprobs))
                    continue
                finished = True
                if isinstance(event, Failed):
                    log.warning("POST %s stream -> %d %s", CHAT_PATH, event.error.status, loggable(event.error.message))
                    metrics.request(event.error.status)
                    yield sse(event.error.body())
                else:
                    log.info("200 chat (stream): %s", reply.summary(event))
                    metrics.request(200)
                    for chunk in reply.last_chunks(event):
                        yield sse(chunk)
                yield "data: [DONE]\n\n"
                return
        finally:
            if not finished:  # the client went away (Starlette cancelled this stream) or the server stops
                metrics.request(499)
                worker.cancel(job, "disconnect")

    return app


class Reply:
    """The response objects of one request, in OpenAI's shapes."""

    def __init__(self, chat: ChatRequest, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        self.text: list[str] = []
        self.logprobs: list[dict] = []  # the non-streamed answer's logprobs entries, when asked

    def add(self, delta: Delta) -> None:
        self.text.append(delta.text)
        self.logprobs += delta.logprobs or []

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, delta: dict, finish_reason: str | None = None, logprobs: list[dict] | None = None) -> dict:
        choice_logprobs = None if logprobs is None else {"content": logprobs, "refusal": None}
        return {
            **self._head("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": choice_logprobs, "finish_reason": finish_reason}],
        }

    def last_chunks(self, done: Finished) -> list[dict]:
        """The chunk with the finish_reason (and the logprobs of tokens no text went out with, such as the end of
        sequence), then (stream_options.include_usage) one with the usage and no choices; the last of them carries
        the speculation statistics under "specvlm"."""
        chunks = [self.chunk({}, done.finish_reason, logprobs=done.logprobs)]
        if self.include_usage:
            chunks.append({**self._head("chat.completion.chunk"), "choices": [], "usage": done.usage})
        chunks[-1]["specvlm"] = done.stats
        return chunks

    def completion(self, done: Finished) -> dict:
        message = {"role": "assistant", "content": "".join(self.text)}
        logprobs = None if done.logprobs is None else {"content": self.logprobs + done.logprobs, "refusal": None}
        return {
            **self._head("chat.completion"),
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": done.finish_reason}],
            "usage": done.usage,
            "specvlm": done.stats,
        }

    @staticmethod
    def summary(done: Finished) -> str:
        tau = done.stats.get("tau")
        return (
            f"{done.usage['prompt_tokens']} prompt + {done.usage['completion_tokens']} new tokens, "
            f"{done.finish_reason}" + ("" if tau is None else f", τ={tau:.2f}")
        )


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def unknown_model(name: str, served: str) -> APIError:
    return APIError(
        404, f"the model {name!r} does not exist: this server serves {served!r}", param="model", code="model_not_found"
    )


async def read_json(request: Request, limit: int, timeout: float = BODY_TIMEOUT_S):
    """The JSON body, refused with a 413 when it exceeds `limit` bytes. An oversized body is still read to its end
    (kept only up to `limit`) when it is at most DRAIN_FACTOR times the limit: a client still sending gets its 413
    rather than a broken pipe. A larger one is refused at once and its connection cut. A body that has not
    arrived within `timeout` seconds gets a 408 (it holds a place in the queue while it trickles in); a client
    that leaves while sending raises ClientGone."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large(limit)
    body: list[bytes] = []
    try:
        size = await asyncio.wait_for(receive_body(request, limit, body), timeout)
    except TimeoutError:
        raise body_timeout(timeout) from None
    except ClientDisconnect:
        raise ClientGone from None
    if size > limit:
        raise too_large(limit)
    try:
        return json.loads(b"".join(body))
    except ValueError:
        raise bad_request("the request body is not valid JSON") from None
    except RecursionError:  # JSON nested thousands deep
        raise bad_request("the request body is nested too deeply") from None


async def receive_body(request: Request, limit: int, body: list[bytes]) -> int:
    """Read the body into `body` up to `limit` bytes, draining to DRAIN_FACTOR x `limit`; its size as far as read."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_FACTOR * limit:
            break
        if size <= limit:
            body.append(chunk)
    return size


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class LoopbackHostOnly:
    """A server on 127.0.0.1 answers only requests addressed to a loopback name: a web page the user visits can make
    the browser send requests here, but under its own host name (DNS rebinding), never under these. A plain ASGI
    middleware: Starlette's `BaseHTTPMiddleware` (what `@app.middleware` makes) wraps `receive` so that a handler's
    `request.is_disconnected()` never sees the client leave."""

    def __init__(self, app, refuse):
        self.app, self.refuse = app, refuse  # refuse(request, APIError) -> the error response

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            request = Request(scope)
            if host_name(request.headers.get("host", "")) not in LOOPBACK_NAMES:
                refusal = APIError(
                    400, "this server answers requests to localhost / 127.0.0.1 / [::1] only", code="invalid_host"
                )
                return await self.refuse(request, refusal)(scope, receive, send)
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """The name in a Host header, without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def too_large(limit: int) -> APIError:
    return APIError(
        413, f"the request body is larger than --max-request-bytes ({limit} bytes)", code="request_too_large"
    )
