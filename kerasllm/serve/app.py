"""`kerasllm serve`: OpenAI's HTTP API (FastAPI) over the serving engine (`kerasllm.serve.engine`).

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (`"stream": true`
sends server-sent events in OpenAI's chunk format, ending with `data: [DONE]`). A chat run answers both; a plain
language-model run answers completions only. With an API key every `/v1/` call needs `Authorization: Bearer KEY`.

A bad request gets a 4xx with OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, and the server
goes on serving. A client that goes away mid-answer frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request as HttpRequest  # at module level: FastAPI resolves the handlers' annotations here

from kerasllm import generation
from kerasllm.core.errors import UserError
from kerasllm.data.chat import check_messages
from kerasllm.serve.engine import Engine, QueueFull, Request

# Only `kerasllm serve` imports this module (FastAPI with it); the command line imports it inside that command.

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_STOP = 4  # OpenAI takes up to 4 stop strings


class ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Served:
    """One model the server answers for: `name` is its id in the API (the run folder's name)."""

    name: str
    engine: Engine
    tokenizer: object
    template: object | None = None  # a chat run's ChatTemplate; None for a plain language model
    max_tokens: int = 256  # the most new tokens one request may ask for
    created: int = field(default_factory=lambda: int(time.time()))


# --- request checking --------------------------------------------------------------------------

def _number(body: dict, key: str, default, low: float, high: float, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not low <= value <= high:
        span = f"an integer from {low:g}" if integer else f"a number from {low:g}"
        raise ApiError(400, f"{key} must be {span} to {high:g}, not {value!r}", param=key, code="invalid_value")
    return value


def sampling(body: dict, served: Served, default_tokens: int) -> dict:
    """The sampling options of a request body, checked (OpenAI's ranges; `top_k` is an extension)."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(default_tokens, served.max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a positive integer, not {max_tokens!r}", param="max_tokens", code="invalid_value")
    if max_tokens > served.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} is more than this server allows ({served.max_tokens}; see serve --max-tokens)",
                       param="max_tokens", code="invalid_value")
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1 (one choice per request)", param="n", code="invalid_value")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP} strings", param="stop", code="invalid_value")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"seed must be an integer, not {seed!r}", param="seed", code="invalid_value")
    return {"max_tokens": max_tokens, "temperature": float(_number(body, "temperature", 1.0, 0, 2)),
            "top_p": float(_number(body, "top_p", 1.0, 1e-9, 1)), "top_k": int(_number(body, "top_k", 0, 0, 1 << 30, integer=True)),
            "seed": seed, "stop": tuple(stop)}


def completion_prompt(body: dict, served: Served) -> np.ndarray:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt", code="invalid_value")
    return generation.encode_prompt(served.tokenizer, prompt)


def chat_prompt(body: dict, served: Served) -> np.ndarray:
    if served.template is None:
        raise ApiError(400, f"model {served.name} is a plain language model (it was not tuned for chat); use /v1/completions",
                       param="model", code="model_not_chat")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages", code="invalid_value")
    try:
        checked = check_messages(messages, "messages", need_assistant=False)
    except UserError as error:
        raise ApiError(400, str(error), param="messages", code="invalid_value") from None
    return served.template.prompt(served.tokenizer, checked)


# --- answering ---------------------------------------------------------------------------------

class Outbox:
    """Events from the engine's thread into the event loop's queues, with one wake-up of the loop for all the events
    posted before it runs (a step of 16 busy slots posts 16 pieces of text: one wake-up, not 16)."""

    def __init__(self, loop):
        self.loop, self.pending, self.lock, self.scheduled = loop, [], threading.Lock(), False

    def post(self, target, item) -> None:
        """Call `target(item)` on the loop's thread, soon."""
        with self.lock:
            self.pending.append((target, item))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            pending, self.pending, self.scheduled = self.pending, [], False
        for target, item in pending:
            target(item)


OUTBOXES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # event loop → its Outbox


class Answer:
    """A submitted request and its events (text, then done) as they come from the engine's thread."""

    def __init__(self, served: Served, prompt: np.ndarray, options: dict):
        loop = asyncio.get_running_loop()
        outbox = OUTBOXES.get(loop) or OUTBOXES.setdefault(loop, Outbox(loop))
        self.events: asyncio.Queue = asyncio.Queue()
        self.ended = asyncio.Event()  # set when "done" arrives (a stream that waits between writes stops waiting)
        put = lambda item: outbox.post(self._receive, item)
        options = dict(options)
        self.request = Request(prompt, options.pop("max_tokens"), on_text=lambda text: put(("text", text)),
                               on_done=lambda reason, usage: put(("done", reason, usage)), sampling=generation.Sampling(**options))
        self.finished = False
        try:
            served.engine.submit(self.request)
        except QueueFull as error:
            raise ApiError(429, f"the server is busy: {error}; retry shortly", code="rate_limit_exceeded",
                           kind="rate_limit_error") from None
        except UserError as error:
            code = "context_length_exceeded" if "context" in str(error) else "invalid_value"
            raise ApiError(400, str(error), code=code) from None

    def _receive(self, event: tuple) -> None:
        self.events.put_nowait(event)
        if event[0] == "done":
            self.ended.set()

    async def batches(self):
        """The events in lists, up to and including "done": each wait for the next event also takes every event that
        is waiting already (under load, several tokens of a stream go out in one write instead of one write each)."""
        try:
            while not self.finished:
                found = [await self.events.get()]
                while found[-1][0] != "done" and not self.events.empty():
                    found.append(self.events.get_nowait())
                self.finished = found[-1][0] == "done"
                yield found
        finally:
            if not self.finished:  # the client went away (or the handler was cancelled): free the slot
                self.request.cancel()

    async def whole(self) -> tuple[str, str, dict]:
        parts, reason, usage = [], "stop", {}
        async for events in self.batches():
            for event in events:
                if event[0] == "text":
                    parts.append(event[1])
                else:
                    reason, usage = event[1], event[2]
        return "".join(parts), reason, usage


def _sse(value) -> str:
    return f"data: {json.dumps(value, ensure_ascii=False)}\n\n"


def _chunk(head: dict, chat: bool, text: str | None, reason: str | None, first: bool = False) -> dict:
    """One streamed chunk in OpenAI's format (`chat.completion.chunk` or `text_completion`)."""
    if chat:
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
        return {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
    return {**head, "object": "text_completion", "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}]}


async def stream_events(answer: Answer, head: dict, chat: bool, interval: float = 0.0):
    """Server-sent events: a chunk per piece of text, one with the finish reason, then `data: [DONE]`. The first chunk
    goes out at once; after it, the chunks ready together are written together, at most one write per `interval`
    seconds (a write per token per stream held a core of 2 under 16 streaming clients; `kerasllm serve
    --stream-interval`)."""
    if chat:
        yield _sse(_chunk(head, chat, None, None, first=True))
    async for events in answer.batches():
        yield "".join(_event_sse(event, head, chat) for event in events)
        if interval and not answer.finished:  # the text of the next `interval` goes out in one write; the end at once
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(answer.ended.wait(), interval)
    yield "data: [DONE]\n\n"


def _event_sse(event: tuple, head: dict, chat: bool) -> str:
    if event[0] == "text":
        return _sse(_chunk(head, chat, event[1], None))
    if event[1] == "error":  # the model failed mid-answer: OpenAI's error body as an event
        return _sse(ApiError(500, f"the model failed on this request ({event[2]['error']})", kind="server_error").body())
    return _sse(_chunk(head, chat, None, "stop" if event[1] == "cancelled" else event[1]))


async def whole_response(answer: Answer, head: dict, chat: bool) -> dict:
    """The answer in one body (`chat.completion` or `text_completion`), with token usage."""
    text, reason, usage = await answer.whole()
    if reason == "error":
        raise ApiError(500, f"the model failed on this request ({usage['error']})", kind="server_error")
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": None}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    return {**head, "object": "text_completion", "choices": [choice], "usage": usage}


async def parse_body(request: HttpRequest, by_name: dict) -> tuple[dict, Served]:
    """A request's JSON object and the model it names (the first one served when it names none)."""
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON ({getattr(error, 'msg', error)})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    name = body.get("model") or next(iter(by_name))
    if name not in by_name:
        raise ApiError(404, f"The model `{name}` does not exist; this server has {', '.join(by_name)}", param="model",
                       code="model_not_found")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "stream must be true or false", param="stream", code="invalid_value")
    return body, by_name[name]


def install_errors(app, api_key: str | None) -> None:
    """OpenAI's error body for every error, and the API key check on /v1/."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    answer = lambda error: JSONResponse(error.body(), status_code=error.status)
    app.add_exception_handler(ApiError, lambda _, error: answer(error))
    app.add_exception_handler(HTTPException, lambda _, error: answer(ApiError(error.status_code, str(error.detail))))
    app.add_exception_handler(RequestValidationError, lambda _, error: answer(ApiError(400, f"invalid request: {error.errors()[0].get('msg')}")))

    if api_key:
        app.add_middleware(KeyCheck, api_key=api_key, refuse=answer)


class KeyCheck:
    """The API key check on /v1/ as plain ASGI middleware: Starlette's `@app.middleware("http")` wraps every streamed
    chunk in one more queue hop (under 16 streaming clients it held a fifth of the server's time)."""

    def __init__(self, app, api_key: str, refuse):
        self.app, self.expected, self.refuse = app, f"Bearer {api_key}".encode(), refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                what = "No API key provided" if not given else "Incorrect API key provided"
                response = self.refuse(ApiError(401, f"{what}; send Authorization: Bearer KEY", code="invalid_api_key"))
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(models: list[Served], api_key: str | None = None, stream_interval: float = 0.0):
    """The FastAPI app answering for `models`; streamed answers are written at most once per `stream_interval` seconds
    after their first chunk."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    by_name = {served.name: served for served in models}
    app = FastAPI(title="kerasllm", docs_url=None, redoc_url=None, openapi_url=None)
    install_errors(app, api_key)

    async def respond(request: HttpRequest, chat: bool):
        body, served = await parse_body(request, by_name)
        if chat:
            options = dict(sampling(body, served, served.max_tokens), allow_eos=True)
            answer = Answer(served, chat_prompt(body, served), options)
        else:
            options = dict(sampling(body, served, COMPLETION_DEFAULT_TOKENS), allow_eos=served.template is not None)
            answer = Answer(served, completion_prompt(body, served), options)
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": served.name}
        if body.get("stream"):
            return StreamingResponse(stream_events(answer, head, chat, stream_interval), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await whole_response(answer, head, chat)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": [{"id": s.name, "busy_slots": s.engine.busy, "slots": s.engine.max_batch} for s in models]}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": s.name, "object": "model", "created": s.created, "owned_by": "kerasllm"}
                                           for s in models]}

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await respond(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await respond(request, chat=True)

    return app


def load_served(run, model, max_batch: int, max_queue: int, max_tokens: int) -> Served:
    """A run and its model behind an engine (started: its step compiled)."""
    if run.task.name not in ("text-generation", "chat"):
        raise UserError(f"{run.path} is {run.spec.name} for {run.task.name}; `kerasllm serve` serves language models "
                        "(transformer-lm, trained or tuned for chat)")
    decoder = run.spec.decoder(model) if run.spec.decoder is not None else None
    if not hasattr(decoder, "per_row"):
        raise UserError(f"{run.path} is {run.spec.name}; `kerasllm serve` keeps a key/value cache per request, so it serves "
                        f"transformer-lm runs and runs tuned from keras-hub presets (use `kerasllm generate {run.path}` for this one)")
    if max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    engine = Engine(decoder, run.artifacts["tokenizer"], max_batch, max_queue).start()
    return Served(run.path.name, engine, run.artifacts["tokenizer"], run.artifacts.get("chat_template"), max_tokens)
