"""What stands between a client and the app of `kerasllm serve`: OpenAI's error body for every error, the API key on
/v1/, and the bounds on a request's body (its size and how long it may take to arrive), as plain ASGI middleware."""

from __future__ import annotations

import asyncio
import hmac

from kerasllm.serve.bodies import ApiError, validation_error

# Only `kerasllm serve` imports this module (FastAPI with it).

MAX_BODY = 4 << 20  # bytes a request body may have (`serve --max-body`): 64 scoring prompts of a 2,048-token context fit
READ_TIMEOUT = 30.0  # seconds a client may send nothing before its body is whole (`serve --read-timeout`)


def install_errors(app, api_key: str | None) -> None:
    """OpenAI's error body for every error, and the API key check on /v1/."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    answer = lambda error: JSONResponse(error.body(), status_code=error.status)
    app.add_exception_handler(ApiError, lambda _, error: answer(error))
    app.add_exception_handler(HTTPException, lambda _, error: answer(ApiError(error.status_code, str(error.detail))))
    app.add_exception_handler(RequestValidationError, lambda _, error: answer(validation_error(error)))

    if api_key:
        app.add_middleware(KeyCheck, api_key=api_key, refuse=answer)
    app.state.refuse = answer  # for `BodyLimits`, which `create_app` adds last (outermost: before every other middleware)


class BodyLimits:
    """Each request's body read whole before the app sees it, within bounds (plain ASGI middleware): more than
    `max_body` bytes, declared or sent, is a 413 the moment it is known (a 20 MB body is not read, then tokenized, before
    its 400); a client that sends nothing for `read_timeout` seconds before its body is whole gets a 408 and is closed
    (clients that sent half a body once stayed connected for ever); one that leaves before its body is whole is let go
    without a word (their leaving once filled the log with tracebacks). uvicorn has no read timeout of its own."""

    def __init__(self, app, max_body: int, read_timeout: float, refuse):
        self.app, self.max_body, self.read_timeout, self.refuse = app, max_body, read_timeout, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return await self.too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                error = ApiError(408, f"the request body did not arrive within {self.read_timeout:g} s (see serve --read-timeout)",
                                 code="request_timeout")
                return await self.closing(error, scope, receive, send)
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self.too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def too_large(self, scope, receive, send):
        error = ApiError(413, f"the request body is larger than this server takes ({self.max_body:,} bytes; see serve --max-body)",
                         code="request_too_large")
        return await self.closing(error, scope, receive, send)

    async def closing(self, error: ApiError, scope, receive, send):
        """The error, and the connection closed after it: the rest of the body is never read."""
        response = self.refuse(error)
        response.headers["connection"] = "close"
        return await response(scope, receive, send)


class KeyCheck:
    """The API key check on /v1/ as plain ASGI middleware: Starlette's `@app.middleware("http")` wraps every streamed
    chunk in one more queue hop (under 16 streaming clients it held a fifth of the server's time; bench/RESULTS.md,
    "Serving", lever 3)."""

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
