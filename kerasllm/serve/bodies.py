"""The request bodies of kerasllm's OpenAI-compatible API, as Pydantic models, and OpenAI's error body.

FastAPI validates a body against these before a handler runs; a field out of range is a 400 with OpenAI's error body
naming it (`validation_error`). Fields OpenAI clients send that kerasllm does not use (user, presence_penalty, …) are
accepted and ignored, as OpenAI's own server accepts unknown extras.
"""

from __future__ import annotations

import math
from typing import Annotated, List, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_PROMPTS = 64  # prompts in one `echo` request (scoring)
MAX_LOGPROBS = 20  # the most alternatives `logprobs` may ask for per position (vLLM's bound)
MAX_STOP = 4  # OpenAI takes up to 4 stop strings
MAX_N = 128  # OpenAI's bound on `n`; a server's own is `kerasllm serve --max-n`


class ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# --- request bodies ----------------------------------------------------------------------------

def _finite(value):
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Number = Annotated[Union[StrictInt, StrictFloat], AfterValidator(_finite)]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False  # a last chunk, before [DONE], with the usage and no choices (OpenAI's)


class SamplingBody(BaseModel):
    """What /v1/completions and /v1/chat/completions share (`top_k` is an extension, as in vLLM and llama.cpp)."""

    model_config = ConfigDict(extra="allow")

    model: Optional[str] = None
    stream: StrictBool = False
    max_tokens: Optional[Annotated[StrictInt, Field(ge=0)]] = None  # 0: only with `echo` (completions)
    max_completion_tokens: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    temperature: Optional[Annotated[Number, Field(ge=0, le=2)]] = None
    top_p: Optional[Annotated[Number, Field(gt=0, le=1)]] = None
    top_k: Optional[Annotated[StrictInt, Field(ge=0, le=1 << 30)]] = None
    n: Optional[Annotated[StrictInt, Field(ge=1, le=MAX_N)]] = None  # choices: each its own slot (at most serve --max-n)
    stop: Optional[Union[StrictStr, Annotated[List[StrictStr], Field(max_length=MAX_STOP)]]] = None
    seed: Optional[StrictInt] = None
    stream_options: Optional[StreamOptions] = None

    def sampling(self, served, default_tokens: int) -> dict:
        """The engine's options; `max_tokens` bounded by the server's `--max-tokens` (`served`: a `kerasllm.serve.app.Served`)."""
        max_tokens = self.max_completion_tokens or self.max_tokens or min(default_tokens, served.max_tokens)
        if max_tokens > served.max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is more than this server allows ({served.max_tokens}; see serve --max-tokens)",
                           param="max_tokens", code="invalid_value")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {"max_tokens": max_tokens, "temperature": float(1.0 if self.temperature is None else self.temperature),
                "top_p": float(1.0 if self.top_p is None else self.top_p), "top_k": int(self.top_k or 0), "seed": self.seed,
                "stop": tuple(stop)}


TokenIds = Annotated[List[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]


class CompletionBody(SamplingBody):
    # a text or token ids; several of either only with `echo` (scoring: lm-evaluation-harness batches its requests)
    prompt: Union[StrictStr, Annotated[List[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)], TokenIds,
                  Annotated[List[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]] = ""
    echo: StrictBool = False
    logprobs: Optional[Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)]] = None

    def prompts(self) -> list:
        """Each prompt: a text, or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class ChatBody(SamplingBody):
    messages: Annotated[List[dict], Field(min_length=1)]  # each checked as kerasllm's chat data is (`check_messages`)
    logprobs: StrictBool = False  # each generated token's log-probability
    top_logprobs: Optional[Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)]] = None  # and the N likeliest beside it

    def alternatives(self) -> int | None:
        """None when `logprobs` is off, else how many alternatives each token lists (`top_logprobs`)."""
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        return (self.top_logprobs or 0) if self.logprobs else None


def validation_error(error) -> ApiError:
    """A body FastAPI could not validate, as OpenAI's 400: the first problem, with the field it is in (`param`)."""
    first = error.errors()[0]
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})",
                        code="invalid_json")
    param = where[0] if where and not where[0].isdigit() else None
    if param is None:
        return ApiError(400, f"the request body must be a JSON object ({first.get('msg')})", code="invalid_json")
    given = f", not {first['input']!r}" if "input" in first and not isinstance(first["input"], (dict, list)) else ""
    return ApiError(400, f"{'.'.join(where)}: {first.get('msg', 'invalid').lower()}{given}", param=param, code="invalid_value")
