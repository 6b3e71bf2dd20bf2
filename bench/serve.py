"""`kerasllm serve` under load: continuous batching against one request at a time, side by side in one run.

    python bench/serve.py                         # trains a small transformer-lm on tinyshakespeare first (about 2 min)
    python bench/serve.py --run runs/my-lm --clients 1 4 16 --requests 4 --max-tokens 64
    python bench/serve.py --run runs/my-lm --engine      # the engine alone, without HTTP

For each server setting (`--max-batch 16`, then `--max-batch 1`, i.e. one request at a time while the others wait),
`kerasllm serve` runs as its own process on 127.0.0.1, and N client threads each send `--requests` streaming
completions one after another (a different prompt each, sampled at temperature 0.8 with a seed, so every request
generates exactly `--max-tokens` tokens: a plain language model does not stop early). Reported per N: requests/s,
generated tokens/s, p50/p95 latency and p50 time to first token. Rows go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_row, machine  # noqa: E402

DATA = Path(os.environ.get("KERASLLM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SECTION = "Serving: continuous batching, CPU time per side (bench/serve.py)"
HEADER = ["date", "machine", "model", "server", "clients", "requests", "req/s", "gen tokens/s", "p50 latency s", "p95 latency s",
          "p50 first token s", "CPU s server / client", "command"]


def train_model(out: Path) -> Path:
    """A 4 × 128 transformer-lm (nanoGPT's CPU width) with a 256-token context, trained briefly on tinyshakespeare."""
    source = DATA / "tinyshakespeare" / "input.txt"
    if not source.is_file():
        sys.exit(f"{source} is missing; pass --run RUN or set KERASLLM_DATA to the shared data folder")
    command = [sys.executable, "-m", "kerasllm", "train", "transformer-lm", "--data", str(source), "--out", str(out), "--quiet",
               "--overwrite", "--epochs", "1", "--set", "data.sequence_length=256", "--set", "model_args.max_sequence_length=256",
               "--set", "train.steps_per_epoch=100", "--set", "train.sample_length=0", "--set", "train.batch_size=16"]
    subprocess.run(command, check=True)
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: Path, max_batch: int, max_tokens: int):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "kerasllm", "serve", str(run), "--port", str(port), "--max-batch", str(max_batch),
                               "--max-tokens", str(max_tokens), "--max-queue", "256"], stdout=subprocess.PIPE, text=True)
    server.stdout.readline()  # "serving … at …": the engine is compiled
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def one_request(base: str, model: str, prompt: str, max_tokens: int, seed: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": True}
    start, first, pieces, reason = time.perf_counter(), None, 0, None
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice["text"]:
                first = first or time.perf_counter()
                pieces += 1
            reason = choice["finish_reason"] or reason
    return {"latency": time.perf_counter() - start, "first": (first or time.perf_counter()) - start, "reason": reason}


async def one_request_raw(base: str, model: str, prompt: str, max_tokens: int, seed: int) -> dict:
    """The same streaming request over a raw socket, read as bytes: the first `data:` is the first token, the finish
    reason is read from the last chunk. A load generator as light as this is what `wrk` or `oha` would be; the Python
    client above spends as much CPU parsing 16 streams as the server spends answering them, on the same 2 cores."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
                       "stream": True}).encode()
    start, first, received = time.perf_counter(), None, bytearray()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (host.encode(), len(body), body))
    await writer.drain()
    while data := await reader.read(65536):
        received += data
        if first is None and b"data: {" in received:
            first = time.perf_counter()
    writer.close()
    reasons = re.findall(rb'"finish_reason":\s*"(\w+)"', bytes(received))
    return {"latency": time.perf_counter() - start, "first": (first or time.perf_counter()) - start,
            "reason": reasons[-1].decode() if reasons else None}


def load(base: str, model: str, prompts: list[str], clients: int, requests: int, max_tokens: int, client: str = "raw") -> dict:
    results, lock = [], threading.Lock()

    def in_thread(index: int):
        for turn in range(requests):
            seed = index * 1000 + turn
            found = one_request(base, model, prompts[seed % len(prompts)], max_tokens, seed)
            with lock:
                results.append(found)

    async def in_loop(index: int):
        for turn in range(requests):
            seed = index * 1000 + turn
            results.append(await one_request_raw(base, model, prompts[seed % len(prompts)], max_tokens, seed))

    async def all_clients():
        await asyncio.gather(*(in_loop(i) for i in range(clients)))

    start, cpu = time.perf_counter(), time.process_time()
    if client == "raw":
        asyncio.run(all_clients())
    else:
        threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu
    assert all(r["reason"] == "length" for r in results), "a request ended early"
    latencies = sorted(r["latency"] for r in results)
    return {"requests": len(results), "wall": wall, "req_s": len(results) / wall, "tokens_s": len(results) * max_tokens / wall,
            "p50": statistics.median(latencies), "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "first": statistics.median(r["first"] for r in results), "client_cpu": client_cpu}


def engine_alone(run: Path, slots: int, clients: int, requests: int, max_tokens: int) -> dict:
    """The engine without HTTP: `clients × requests` requests submitted at once (they wait for slots), sampled as the
    clients' are; generated tokens per second of wall."""
    from kerasllm import generation, runs
    from kerasllm.core.quiet import load_tensorflow
    from kerasllm.export.saving import load_model
    from kerasllm.serve.engine import Engine, Request

    load_tensorflow()
    found = runs.load_run(run)
    tokenizer = found.artifacts["tokenizer"]
    engine = Engine(found.spec.decoder(load_model(run / "model.keras")), tokenizer, slots, clients * requests).start()
    finished = threading.Semaphore(0)
    start = time.perf_counter()
    for seed in range(clients * requests):
        engine.submit(Request(tokenizer.encode(f"ROMEO {seed}:\n"), max_tokens, lambda text: None, lambda *_: finished.release(),
                              generation.Sampling(temperature=0.8, seed=seed, allow_eos=False)))
    for _ in range(clients * requests):
        finished.acquire()
    wall = time.perf_counter() - start
    engine.stop()
    return {"tokens_s": clients * requests * max_tokens / wall, "ms_per_step": wall / engine.steps * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a transformer-lm run to serve (default: train one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="slots of the continuous-batching server")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="raw: streams read as bytes on one asyncio loop (light); httpx: a thread per client, each chunk parsed")
    parser.add_argument("--engine", action="store_true", help="time the engine alone (no HTTP, in this process) instead")
    args = parser.parse_args()
    run = args.run or train_model(Path("runs") / "bench-serve-lm")
    if args.engine:
        clients = max(args.clients)
        found = {slots: engine_alone(run, slots, clients, args.requests, args.max_tokens) for slots in (args.batch, 1)}
        for slots, row in found.items():
            print(f"engine alone, {slots:2} slot(s), {clients} × {args.requests} requests: {row['tokens_s']:.0f} tokens/s, "
                  f"{row['ms_per_step']:.2f} ms per step")
        print(f"engine alone: {found[args.batch]['tokens_s'] / found[1]['tokens_s']:.2f}× the tokens/s of one slot")
        return
    text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8") if (DATA / "tinyshakespeare").is_dir() else "The king "
    prompts = [line for line in text.splitlines() if 20 <= len(line) <= 60][:200] or ["The king "]
    command = "python bench/serve.py " + " ".join(sys.argv[1:])
    table = {}
    for label, max_batch in ((f"continuous batching, {args.batch} slots", args.batch), ("one at a time (1 slot)", 1)):
        server, base = start_server(run, max_batch, args.max_tokens)
        try:
            one_request(base, run.name, prompts[0], 4, 0)  # warm: the first prefill shapes compile
            for clients in args.clients:
                server_cpu = process_cpu(server.pid)
                found = load(base, run.name, prompts, clients, args.requests, args.max_tokens, args.client)
                found["server_cpu"] = process_cpu(server.pid) - server_cpu
                table[(label, clients)] = found
                print(f"{label:34} {clients:3} clients: {found['req_s']:.2f} req/s, {found['tokens_s']:.0f} tokens/s, "
                      f"p50 {found['p50']:.2f} s, p95 {found['p95']:.2f} s, first token {found['first']:.3f} s; CPU s: server "
                      f"{found['server_cpu']:.1f}, client {found['client_cpu']:.1f}, wall {found['wall']:.1f}", flush=True)
                append_row(SECTION, HEADER, [time.strftime("%Y-%m-%d"), machine(), f"transformer-lm 4×128, context 256 ({run.name})",
                                             label, str(clients), str(found["requests"]), f"{found['req_s']:.2f}",
                                             f"{found['tokens_s']:.0f}", f"{found['p50']:.2f}", f"{found['p95']:.2f}",
                                             f"{found['first']:.3f}", f"{found['server_cpu']:.1f} / {found['client_cpu']:.1f}",
                                             f"`{command}`"])
        finally:
            server.terminate()
            server.wait(timeout=30)
    for clients in args.clients:
        batched = table[(f"continuous batching, {args.batch} slots", clients)]["tokens_s"]
        alone = table[("one at a time (1 slot)", clients)]["tokens_s"]
        print(f"{clients:3} clients: continuous batching {batched / alone:.2f}× the tokens/s of one at a time")


if __name__ == "__main__":
    main()
