"""Talking to runs: `chat` in the terminal and `serve` over OpenAI's HTTP API, through `kerasllm.serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from kerasllm import generation
from kerasllm.commands.common import (
    MaxLengthOption,
    ModelOrRun,
    SampleSeedOption,
    TemperatureOption,
    TopKOption,
    TopPOption,
    UnsafeFlag,
    check_new_tokens,
    console,
    debugging,
    handle_errors,
    load_run_and_model,
    note,
    write,
)
from kerasllm.core.errors import UserError
from kerasllm.core.words import a, count
from kerasllm.serve import launch
from kerasllm.serve.session import HELP, ChatSession, talk


@handle_errors
def chat(
    source: ModelOrRun,
    system: Annotated[Optional[str], typer.Option(help="A system message to start the conversation with.")] = None,
    max_length: MaxLengthOption = 200,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = 0,
    top_p: TopPOption = 1.0,
    seed: SampleSeedOption = None,
    unsafe: UnsafeFlag = False,
):
    """Talk to a chat run in the terminal: replies stream as they are written, and the conversation is kept (its oldest
    turns left out, with a note, once it outgrows the model's context).

    Commands: /reset · /system TEXT · /save FILE (appends the conversation as JSONL messages) · /help.
    Ctrl-C stops an answer and keeps the session; Ctrl-D leaves.

    Example: `kerasllm chat runs/transformer-lm-20261201-120000 --temperature 0.5`
    """
    generation.check_options(temperature, top_k, top_p, max_length)
    check_new_tokens(max_length, " (default 200)")
    run, model = load_run_and_model(source, unsafe)
    if run.task.name != "chat":
        raise UserError(f"{source} is {a(run.task.name)} model, not tuned for chat; tune it with "
                        f"`kerasllm finetune {source} --task chat --data CONVERSATIONS.jsonl`")
    replier = run.task.replier(model, run)

    def reply(messages, on_text, on_note):
        return replier(messages, max_length=max_length, on_text=on_text, on_note=on_note, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed)

    console.print(f"chatting with {run.path.name} ({run.spec.name}); {HELP}", highlight=False)
    talk(ChatSession(reply, system), write, lambda said: console.print(said, highlight=False), note)


@handle_errors
def serve(
    sources: Annotated[List[Path], typer.Argument(help="One or more transformer-lm runs (tuned for chat, or plain); each is a "
                                                       "model in the API, named after its folder.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 answers this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="KERASLLM_API_KEY", help="Require this key (Authorization: Bearer KEY) "
                                                   "on every /v1 call; also read from KERASLLM_API_KEY.")] = None,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together, per model (continuous batching).")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for a free slot; more get 429.")] = 64,
    max_tokens: Annotated[int, typer.Option(help="The most new tokens one request may ask for.")] = 256,
    max_n: Annotated[int, typer.Option(help="The most choices (`n`) one request may ask for; each takes a slot.")] = 4,
    stream_interval: Annotated[float, typer.Option(help="Streamed answers: after the first token, the text of this many "
                                                        "milliseconds goes out in one write (0: a write per token).")] = 20,
    max_body: Annotated[float, typer.Option(help="The largest request body taken, in MB; a larger one gets 413.")] = 4,
    read_timeout: Annotated[float, typer.Option(help="Seconds a client may send nothing before its request body is whole; "
                                                     "then 408.")] = 30,
    drain_seconds: Annotated[float, typer.Option(help="On Ctrl-C or SIGTERM: seconds the open requests get to finish before "
                                                      "they are ended.")] = 30,
    unsafe: UnsafeFlag = False,
):
    """Serve runs over OpenAI's HTTP API: /v1/models, /v1/completions, /v1/chat/completions (streaming too), /health.

    Any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")`.

    Example: `kerasllm serve runs/transformer-lm-20261201-120000 --port 8000 --max-batch 16`
    """
    launch.check_options(port, stream_interval, max_body, read_timeout, drain_seconds)
    listener = launch.listen(host, port)
    loaded = [load_run_and_model(source, unsafe) for source in sources]
    names = [run.path.name for run, _ in loaded]
    if len(set(names)) < len(names):
        raise UserError(f"two runs share the folder name {max(names, key=names.count)}, which names a model in the API; rename one")
    from kerasllm.serve import app  # FastAPI

    served = [app.load_served(run, model, max_batch, max_queue, max_tokens, max_n) for run, model in loaded]
    if not api_key and host not in launch.LOCAL_HOSTS:
        note(f"{host} answers other machines and no --api-key is set, so anyone who reaches it can use it")
    console.print(f"serving {', '.join(names)} at {launch.address(host, port)} ({count(max_batch, 'slot')} per model"
                  f"{', API key required' if api_key else ''}); Ctrl-C stops", highlight=False)
    how = launch.serve(listener, served, api_key, stream_interval, debug=debugging(), max_body_mb=max_body,
                       read_timeout=read_timeout, drain_seconds=drain_seconds)
    console.print(f"server stopped{f' ({how}: no new requests; the open ones had up to {drain_seconds:g} s to finish)' if how else ''}",
                  highlight=False)
