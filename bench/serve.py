"""`kerasllm serve` under load: continuous batching against one request at a time, side by side in one run.

    python bench/serve.py                         # trains a small transformer-lm on tinyshakespeare first (about 2 min)
    python bench/serve.py --run runs/my-lm --clients 1 4 16 --requests 4 --max-tokens 64

For each server setting (`--max-batch 16`, then `--max-batch 1`, i.e. one request at a time while the others wait),
`kerasllm serve` runs as its own process on 127.0.0.1, and N client threads each send `--requests` streaming
completions one after another (a different prompt each, sampled at temperature 0.8 with a seed, so every request
generates exactly `--max-tokens` tokens: a plain language model does not stop early). Reported per N: requests/s,
generated tokens/s, p50/p95 latency and p50 time to first token. Rows go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
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
SECTION = "Serving: continuous batching (bench/serve.py)"
HEADER = ["date", "machine", "model", "server", "clients", "requests", "req/s", "gen tokens/s", "p50 latency s", "p95 latency s",
          "p50 first token s", "command"]


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


def load(base: str, model: str, prompts: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    results, lock = [], threading.Lock()

    def client(index: int):
        for turn in range(requests):
            seed = index * 1000 + turn
            found = one_request(base, model, prompts[seed % len(prompts)], max_tokens, seed)
            with lock:
                results.append(found)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    assert all(r["reason"] == "length" for r in results), "a request ended early"
    latencies = sorted(r["latency"] for r in results)
    return {"requests": len(results), "wall": wall, "req_s": len(results) / wall, "tokens_s": len(results) * max_tokens / wall,
            "p50": statistics.median(latencies), "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "first": statistics.median(r["first"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a transformer-lm run to serve (default: train one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="slots of the continuous-batching server")
    args = parser.parse_args()
    run = args.run or train_model(Path("runs") / "bench-serve-lm")
    text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8") if (DATA / "tinyshakespeare").is_dir() else "The king "
    prompts = [line for line in text.splitlines() if 20 <= len(line) <= 60][:200] or ["The king "]
    command = "python bench/serve.py " + " ".join(sys.argv[1:])
    table = {}
    for label, max_batch in ((f"continuous batching, {args.batch} slots", args.batch), ("one at a time (1 slot)", 1)):
        server, base = start_server(run, max_batch, args.max_tokens)
        try:
            one_request(base, run.name, prompts[0], 4, 0)  # warm: the first prefill shapes compile
            for clients in args.clients:
                found = load(base, run.name, prompts, clients, args.requests, args.max_tokens)
                table[(label, clients)] = found
                print(f"{label:34} {clients:3} clients: {found['req_s']:.2f} req/s, {found['tokens_s']:.0f} tokens/s, "
                      f"p50 {found['p50']:.2f} s, p95 {found['p95']:.2f} s, first token {found['first']:.3f} s", flush=True)
                append_row(SECTION, HEADER, [time.strftime("%Y-%m-%d"), machine(), f"transformer-lm 4×128, context 256 ({run.name})",
                                             label, str(clients), str(found["requests"]), f"{found['req_s']:.2f}",
                                             f"{found['tokens_s']:.0f}", f"{found['p50']:.2f}", f"{found['p95']:.2f}",
                                             f"{found['first']:.3f}", f"`{command}`"])
        finally:
            server.terminate()
            server.wait(timeout=30)
    for clients in args.clients:
        batched = table[(f"continuous batching, {args.batch} slots", clients)]["tokens_s"]
        alone = table[("one at a time (1 slot)", clients)]["tokens_s"]
        print(f"{clients:3} clients: continuous batching {batched / alone:.2f}× the tokens/s of one at a time")


if __name__ == "__main__":
    main()
