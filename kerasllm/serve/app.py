"""`kerasllm serve`: OpenAI's HTTP API (FastAPI) over the serving engine (`kerasllm.serve.engine`).

Endpoints: `GET /health`, `GET /metrics` (Prometheus), `GET /v1/models`, `POST /v1/completions` (with `echo`: a
prompt's log-probabilities, `kerasllm.serve.scoring`), `POST /v1/chat/completions` (`"stream": true`
sends server-sent events in OpenAI's chunk format, ending with `data: [DONE]`). A chat run answers both; a plain
language-model run answers completions only. With an API key every `/v1/` call needs `Authorization: Bearer KEY`.

A bad request gets a 4xx with OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, and the server
goes on serving. A client that goes away mid-answer frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field

import numpy as np

from kerasllm import generation
from kerasllm.core.errors import UserError
from kerasllm.data.chat import check_messages
from kerasllm.serve.bodies import COMPLETION_DEFAULT_TOKENS, MAX_N, ApiError, ChatBody, CompletionBody, SamplingBody
from kerasllm.serve.engine import Engine, QueueFull, Request
from kerasllm.serve.guards import MAX_BODY, READ_TIMEOUT, BodyLimits, install_errors

# Only `kerasllm serve` imports this module (FastAPI with it); the command line imports it inside that command.

PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")  # /metrics' path labels


@dataclass
class Served:
    """One model the server answers for: `name` is its id in the API (the run folder's name)."""

    name: str
    engine: Engine
    tokenizer: object
    template: object | None = None  # a chat run's ChatTemplate; None for a plain language model
    max_tokens: int = 256  # the most new tokens one request may ask for
    max_n: int = 4  # the most choices (`n`) one request may ask for: each takes a slot
    model: object = None  # the Keras model itself: `echo` scores a prompt in one call of it (kerasllm.serve.scoring)
    created: int = field(default_factory=lambda: int(time.time()))


def prompt_ids(prompt, served: Served) -> np.ndarray:
    """A prompt's token ids: a text encoded as `kerasllm generate` encodes it, or ids checked against the vocabulary."""
    if isinstance(prompt, str):
        return generation.encode_prompt(served.tokenizer, prompt)
    ids = np.asarray(prompt, np.int64)
    if ids.max() >= served.tokenizer.vocab_size:
        raise ApiError(400, f"prompt: token id {int(ids.max())} is outside the vocabulary of {served.tokenizer.vocab_size}",
                       param="prompt", code="invalid_value")
    return ids.astype(np.int32)


def completion_prompt(body: CompletionBody, served: Served) -> np.ndarray:
    prompts = body.prompts()
    if len(prompts) > 1:
        raise ApiError(400, "several prompts in one request are answered only with echo (scoring); send one prompt per "
                       "request to generate", param="prompt", code="invalid_value")
    return prompt_ids(prompts[0], served)


async def echo_response(body: CompletionBody, served: Served, head: dict) -> dict:
    """`echo`: each prompt's text and, with `logprobs`, its tokens' log-probabilities, then at most one greedy token
    (`kerasllm.serve.scoring`); one choice per prompt."""
    from kerasllm.serve import scoring

    generate = COMPLETION_DEFAULT_TOKENS if body.max_tokens is None else body.max_tokens
    if generate > 1 or body.stream:
        raise ApiError(400, "with echo this server returns the prompt's log-probabilities and at most one token after it, "
                       "in one body: pass max_tokens 0 or 1 and no stream", param="max_tokens", code="invalid_value")
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, prompt in enumerate(body.prompts()):
        ids = prompt_ids(prompt, served)
        found = await asyncio.to_thread(scoring.echo, served.model, served.tokenizer, ids, served.engine.context,
                                        body.logprobs or 0, generate)
        choices.append({"index": index, "text": found["text"], "finish_reason": "length",
                        "logprobs": found["logprobs"] if body.logprobs is not None else None})
        prompt_tokens, completion_tokens = prompt_tokens + len(ids), completion_tokens + found["completion_tokens"]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    return {**head, "object": "text_completion", "choices": choices, "usage": usage}


def chat_prompt(body: ChatBody, served: Served) -> np.ndarray:
    if served.template is None:
        raise ApiError(400, f"model {served.name} is a plain language model (it was not tuned for chat); use /v1/completions",
                       param="model", code="model_not_chat")
    try:
        checked = check_messages(body.messages, "messages", need_assistant=False)
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

    def __init__(self, served: Served, prompt: np.ndarray, options: dict, metrics=None):
        loop = asyncio.get_running_loop()
        outbox = OUTBOXES.get(loop) or OUTBOXES.setdefault(loop, Outbox(loop))
        self.events: asyncio.Queue = asyncio.Queue()
        self.ended = asyncio.Event()  # set when "done" arrives (a stream that waits between writes stops waiting)
        put = lambda item: outbox.post(self._receive, item)
        options = dict(options)
        self.request = Request(prompt, options.pop("max_tokens"), on_text=lambda text, entries: put(("text", text, entries)),
                               on_done=lambda reason, usage: put(("done", reason, usage)), logprobs=options.pop("logprobs", None),
                               sampling=generation.Sampling(**options))
        self.finished = False
        self.watch = metrics.watch(served, self.request) if metrics is not None else None
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
        if self.watch is not None and event[0] == "text":
            self.watch.text()
        elif self.watch is not None:
            self.watch.done(event[2] if event[1] != "error" else {})
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

    async def whole(self) -> tuple[str, str, dict, list]:
        """(the text, the finish reason, the usage, the log-probability entries of its tokens)."""
        parts, reason, usage, entries = [], "stop", {}, []
        async for events in self.batches():
            for event in events:
                if event[0] == "text":
                    parts.append(event[1])
                    entries.extend(event[2])
                else:
                    reason, usage = event[1], event[2]
        return "".join(parts), reason, usage, entries


# Server-sent events are framed here rather than by FastAPI's EventSourceResponse (one write per event): the text ready
# together goes out in one write, at most one per `--stream-interval` after the first token; fewer writes and wake-ups
# are one of the levers that took the 16-client load from 2.57× to 3.37× the tokens/s of one request at a time
# (bench/RESULTS.md, "Serving", lever 3).

def _sse(value) -> str:
    return f"data: {json.dumps(value, ensure_ascii=False)}\n\n"


def _chunk(head: dict, chat: bool, text: str | None, reason: str | None, first: bool = False, logprobs: dict | None = None,
           index: int = 0) -> dict:
    """One streamed chunk of choice `index` in OpenAI's format (`chat.completion.chunk` or `text_completion`)."""
    if chat:
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
        choice = {"index": index, "delta": delta, "finish_reason": reason}
        return {**head, "object": "chat.completion.chunk", "choices": [{**choice, "logprobs": logprobs} if logprobs else choice]}
    return {**head, "object": "text_completion",
            "choices": [{"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": reason}]}


class Logprobs:
    """A request's `logprobs` in OpenAI's shape for its endpoint, piece by piece (a completion's `text_offset` runs on
    across a stream's chunks); `asked` is False when the request did not ask for them."""

    def __init__(self, tokenizer, chat: bool, asked: bool):
        self.tokenizer, self.chat, self.asked, self.offset = tokenizer, chat, asked, 0

    def __call__(self, entries: list) -> dict | None:
        from kerasllm.serve import scoring

        if not self.asked:
            return None
        if self.chat:
            return scoring.chat_logprobs(self.tokenizer, entries)
        found, self.offset = scoring.completion_logprobs(self.tokenizer, entries, self.offset)
        return found


async def stream_events(answers: list, head: dict, chat: bool, interval: float = 0.0, usage: bool = False,
                        logprobs=None):
    """Server-sent events of `answers` (`n` choices, each chunk naming its choice's index): a chunk per piece of text,
    one with each finish reason, then `data: [DONE]`. The first chunk goes out at once; after it, the chunks ready
    together are written together, at most one write per `interval` seconds (a write per token per stream held a core
    of 2 under 16 streaming clients; `kerasllm serve --stream-interval`). `logprobs()` makes each choice's `Logprobs`."""
    describe = [logprobs() if logprobs else Logprobs(None, chat, asked=False) for _ in answers]
    if chat:
        yield "".join(_sse(_chunk(head, chat, None, None, first=True, index=index)) for index in range(len(answers)))
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, answer: Answer) -> None:  # one choice's events into the merged queue, then None
        try:
            async for events in answer.batches():
                merged.put_nowait((index, events))
        finally:
            merged.put_nowait((index, None))

    pumps = [asyncio.ensure_future(pump(index, answer)) for index, answer in enumerate(answers)]
    counted, running = {}, len(answers)
    try:
        while running:
            found = [await merged.get()]
            while not merged.empty():
                found.append(merged.get_nowait())
            parts = []
            for index, events in found:
                if events is None:
                    running -= 1
                    continue
                parts.append("".join(_event_sse(event, head, chat, describe[index], index) for event in events))
                counted[index] = next((e[2] for e in events if e[0] == "done" and e[1] != "error"), counted.get(index, {}))
            if parts:
                yield "".join(parts)
            if interval and not all(answer.finished for answer in answers):  # the next `interval`'s text in one write
                waiting = [answer.ended.wait() for answer in answers if not answer.finished]  # the end goes at once
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*waiting), interval)
    finally:  # the client went away: each choice's `batches` frees its slot
        for task in pumps:
            task.cancel()
    if usage:  # `stream_options.include_usage`: the usage in a chunk of its own, with no choices
        prompt = next((found.get("prompt_tokens", 0) for found in counted.values()), 0)
        completion = sum(found.get("completion_tokens", 0) for found in counted.values())
        yield _sse({**head, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
    yield "data: [DONE]\n\n"


def _event_sse(event: tuple, head: dict, chat: bool, logprobs: Logprobs, index: int = 0) -> str:
    if event[0] == "text":
        return _sse(_chunk(head, chat, event[1], None, logprobs=logprobs(event[2]), index=index))
    if event[1] == "error":  # the model failed mid-answer: OpenAI's error body as an event
        return _sse(ApiError(500, f"the model failed on this request ({event[2]['error']})", kind="server_error").body())
    return _sse(_chunk(head, chat, None, "stop" if event[1] == "cancelled" else event[1], index=index))


async def whole_response(answers: list, head: dict, chat: bool, tokenizer=None, asked: bool = False) -> dict:
    """The answers (`n` choices) in one body (`chat.completion` or `text_completion`), with token usage: the prompt
    counted once, the choices' tokens added up; with `asked`, each choice's `logprobs`."""
    found = await asyncio.gather(*(answer.whole() for answer in answers))
    choices, completion = [], 0
    for index, (text, reason, usage, entries) in enumerate(found):
        if reason == "error":
            raise ApiError(500, f"the model failed on this request ({usage['error']})", kind="server_error")
        completion += usage.get("completion_tokens", 0)
        logprobs = Logprobs(tokenizer, chat, asked)(entries)
        choices.append({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": logprobs}
                       if chat else {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason})
    prompt = found[0][2].get("prompt_tokens", 0)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices, "usage": usage}


def choices_asked(body: SamplingBody, served: Served) -> int:
    """How many choices a generating request asks for (`n`), once what it cannot have is refused."""
    if 0 in (body.max_tokens, body.max_completion_tokens):
        raise ApiError(400, "max_tokens 0 generates nothing: it is for echo (scoring a prompt); pass 1 or more",
                       param="max_tokens", code="invalid_value")
    count = body.n or 1
    if count > served.max_n:
        raise ApiError(400, f"n {count} is more choices than this server gives ({served.max_n}; see serve --max-n)",
                       param="n", code="invalid_value")
    return count


def submit_choices(served: Served, prompt: np.ndarray, options: dict, count: int, metrics) -> list:
    """`count` answers to one prompt, each its own request (slot); with a seed, choice i samples with seed + i, so the
    same request gives the same choices. If one cannot be queued, those already queued are cancelled."""
    answers = []
    try:
        for index in range(count):
            seeded = dict(options, seed=options["seed"] + index) if options.get("seed") is not None else options
            answers.append(Answer(served, prompt, seeded, metrics))
    except ApiError:
        for answer in answers:
            answer.request.cancel()
        raise
    return answers


def named_model(body: SamplingBody, by_name: dict) -> Served:
    """The model a request names (the first one served when it names none)."""
    name = body.model or next(iter(by_name))
    if name not in by_name:
        raise ApiError(404, f"The model `{name}` does not exist; this server has {', '.join(by_name)}", param="model",
                       code="model_not_found")
    return by_name[name]


def create_app(models: list[Served], api_key: str | None = None, stream_interval: float = 0.0, max_body: int = MAX_BODY,
               read_timeout: float = READ_TIMEOUT):
    """The FastAPI app answering for `models`; streamed answers are written at most once per `stream_interval` seconds
    after their first chunk; request bodies are bounded (`BodyLimits`)."""
    from fastapi import FastAPI
    from fastapi.responses import Response, StreamingResponse

    from kerasllm.serve.metrics import CONTENT_TYPE, Metrics

    by_name = {served.name: served for served in models}
    app = FastAPI(title="kerasllm", docs_url=None, redoc_url=None, openapi_url=None)
    install_errors(app, api_key)
    metrics = Metrics(models)

    @app.middleware("http")
    async def count(request, call_next):  # every answer by path and status (an unknown path counts as "other")
        response = await call_next(request)
        path = request.url.path
        metrics.answered(path if path in PATHS else "other", response.status_code)
        return response

    # last, so outermost: a body too large or too slow is answered before any other middleware runs, and a client that
    # leaves before its body is whole reaches none of them
    app.add_middleware(BodyLimits, max_body=max_body, read_timeout=read_timeout, refuse=app.state.refuse)

    async def respond(body: SamplingBody, chat: bool):
        served = named_model(body, by_name)
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": served.name}
        if not chat and body.echo:
            answered = await echo_response(body, served, head)
            metrics.prompt_tokens.labels(served.name).inc(answered["usage"]["prompt_tokens"])
            return answered
        count = choices_asked(body, served)
        if chat:
            top = body.alternatives()
            options = dict(body.sampling(served, served.max_tokens), allow_eos=True, logprobs=top)
            prompt = chat_prompt(body, served)
        else:
            top = None if body.logprobs is None else max(body.logprobs, 1)  # OpenAI gives the likeliest at least
            options = dict(body.sampling(served, COMPLETION_DEFAULT_TOKENS), allow_eos=served.template is not None, logprobs=top)
            prompt = completion_prompt(body, served)
        answers = submit_choices(served, prompt, options, count, metrics)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(answers, head, chat, stream_interval, usage,
                                                   lambda: Logprobs(served.tokenizer, chat, top is not None)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await whole_response(answers, head, chat, served.tokenizer, top is not None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": [{"id": s.name, "busy_slots": s.engine.busy, "slots": s.engine.max_batch} for s in models]}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": s.name, "object": "model", "created": s.created, "owned_by": "kerasllm"}
                                           for s in models]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        return await respond(body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        return await respond(body, chat=True)

    return app


def load_served(run, model, max_batch: int, max_queue: int, max_tokens: int, max_n: int = 4) -> Served:
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
    if not 1 <= max_n <= MAX_N:
        raise UserError(f"--max-n must be between 1 and {MAX_N}")
    engine = Engine(decoder, run.artifacts["tokenizer"], max_batch, max_queue).start()
    return Served(run.path.name, engine, run.artifacts["tokenizer"], run.artifacts.get("chat_template"), max_tokens,
                  max_n=max_n, model=model)
