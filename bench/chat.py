"""Instruction tuning, FLAN-style, on the data in ../shared/data; evaluated through `kerasllm serve` with the `openai` client.

    python bench/chat.py                     # both models, 15 minutes of training each (2 cores)
    python bench/chat.py --minutes 30 --eval 100

The mixture (`--task chat` conversations, one exchange each), with several phrasings of each instruction; the last
phrasing of every task is held out of training:

* translation: Multi30k English → German ("Translate to German: …"), scored with BLEU (sacreBLEU) on test_2016_flickr;
* sentiment: SST-2 ("Is this review positive or negative? …" → positive / negative), accuracy on stsa.binary.dev;
* summarization: SciTLDR, the first two sentences of the abstract → its first TL;DR, ROUGE-1 on dev;
* continuation: tinyshakespeare, a line → the next line, ROUGE-1 against it (a weak, reference-based score).

Models: transformer-lm (4 layers × 256, context 256, a sentencepiece vocabulary of 4,000), trained from scratch
(no pretraining) with a wall-clock budget (`train.max_seconds`): the mixture, and the same model on translation alone.
Every answer is asked for through a `kerasllm serve` process with the official `openai` client (greedy), for the
seen phrasings and for the held-out one. Rows go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_row, machine  # noqa: E402
from serve import start_server  # noqa: E402

DATA = Path(os.environ.get("KERASLLM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
WORK = Path("runs") / "bench-chat"
SECTION = "Instruction tuning, FLAN-style mixture, evaluated through the server (bench/chat.py)"
HEADER = ["date", "machine", "model", "trained on", "train minutes", "phrasings", "translation BLEU", "sentiment accuracy",
          "summary ROUGE-1", "continuation ROUGE-1", "command"]

PHRASINGS = {  # the last of each is held out of training
    "translation": ["Translate to German: {x}", "Translate this sentence into German: {x}", "German translation, please: {x}",
                    "How do you say this in German? {x}"],
    "sentiment": ["Is this review positive or negative? {x}", "Review: {x}\nPositive or negative?",
                  "What is the sentiment of this review? {x}", "Does this reviewer like the film? Answer positive or negative. {x}"],
    "summary": ["Summarize in one sentence: {x}", "TL;DR: {x}", "Give a one-sentence summary of this abstract: {x}",
                "What is this paper about, in one sentence? {x}"],
    "continuation": ["Continue the text: {x}", "What comes next? {x}", "Write the next line: {x}", "Go on from here: {x}"],
}


def lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def examples(split: str) -> dict[str, list[tuple[str, str]]]:
    """(input, answer) pairs per task; `split` is train or eval."""
    m30k = DATA / "multi30k"
    pairs = (list(zip(lines(m30k / "train.en.gz"), lines(m30k / "train.de.gz"))) if split == "train" else
             list(zip(lines(m30k / "test_2016_flickr.en.gz"), lines(m30k / "test_2016_flickr.de.gz"))))
    sst = [line.split(" ", 1) for line in lines(DATA / "sst" / ("stsa.binary.train" if split == "train" else "stsa.binary.dev"))]
    reviews = [(text, "positive" if label == "1" else "negative") for label, text in sst]
    scitldr = [json.loads(line) for line in lines(DATA / "scitldr" / ("train.jsonl" if split == "train" else "dev.jsonl"))]
    summaries = [(" ".join(row["source"][:2]), row["target"][0]) for row in scitldr if row["target"]]
    play = [line for line in lines(DATA / "tinyshakespeare" / "input.txt") if line.strip()]
    cut = int(len(play) * 0.9)
    play = play[:cut] if split == "train" else play[cut:]
    continuation = [(play[i], play[i + 1]) for i in range(0, len(play) - 1, 2)]
    return {"translation": pairs, "sentiment": reviews, "summary": summaries, "continuation": continuation}


def conversation(task: str, phrasing: str, source: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": phrasing.format(x=source)}, {"role": "assistant", "content": answer}]}


def write_mixture(path: Path, tasks: list[str], per_task: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    found = examples("train")
    rows = []
    for task in tasks:
        pool = found[task]
        rng.shuffle(pool)
        for source, answer in pool[:per_task]:
            rows.append(conversation(task, rng.choice(PHRASINGS[task][:-1]), source, answer))
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def train(data: Path, out: Path, minutes: float) -> None:
    command = [sys.executable, "-m", "kerasllm", "train", "transformer-lm", "--task", "chat", "--data", str(data), "--out", str(out),
               "--overwrite", "--quiet", "--epochs", "100", "--set", f"train.max_seconds={int(minutes * 60)}",
               "--set", "data.tokenizer=sentencepiece", "--set", "data.vocab_size=4000", "--set", "data.sequence_length=256",
               "--set", "model_args.max_sequence_length=256", "--set", "model_args.num_layers=4", "--set", "model_args.hidden_dim=256",
               "--set", "model_args.num_heads=4", "--set", "model_args.dropout=0.0", "--set", "train.batch_size=16",
               "--set", "train.learning_rate=1e-3", "--set", "train.warmup_steps=200", "--set", "data.validation_fraction=0.02",
               "--set", "train.early_stopping_patience=0", "--set", "train.sample_length=0"]
    subprocess.run(command, check=True)


def scores(client, model: str, tasks: list[str], count: int) -> dict:
    """Per task and phrasing kind (seen / held out): the metric over `count` evaluation examples."""
    import sacrebleu
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    found = examples("eval")
    results = {}

    def ask(prompt: str) -> str:
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
                                                max_tokens=96)
        return answer.choices[0].message.content.strip()

    for task in tasks:
        rng = random.Random(1)
        pool = found[task][:]
        rng.shuffle(pool)
        pool = pool[:count]
        for kind, phrasings in (("seen", PHRASINGS[task][:-1]), ("held out", PHRASINGS[task][-1:])):
            prompts = [phrasings[i % len(phrasings)].format(x=source) for i, (source, _) in enumerate(pool)]
            with ThreadPoolExecutor(16) as workers:
                answers = list(workers.map(ask, prompts))
            references = [answer for _, answer in pool]
            if task == "translation":
                value = sacrebleu.corpus_bleu(answers, [references]).score
            elif task == "sentiment":
                value = 100 * sum(a.lower().startswith(r) for a, r in zip(answers, references)) / len(pool)
            else:
                value = 100 * sum(rouge.score(r, a)["rouge1"].fmeasure for a, r in zip(answers, references)) / len(pool)
            results[(task, kind)] = value
            print(f"{model:28} {task:13} {kind:9} {value:6.2f}   e.g. {prompts[0][:50]!r} → {answers[0][:60]!r}", flush=True)
    return results


def serve_and_score(run: Path, tasks: list[str], count: int) -> dict:
    import openai

    server, base = start_server(run, max_batch=16, max_tokens=256)  # bench/serve.py's: 16 slots, a queue of 256
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", timeout=600)
        return scores(client, run.name, tasks, count)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each model")
    parser.add_argument("--per-task", type=int, default=8000, help="training conversations per task")
    parser.add_argument("--eval", type=int, default=100, help="evaluation examples per task and phrasing kind")
    args = parser.parse_args()
    command = "python bench/chat.py " + " ".join(sys.argv[1:])
    all_tasks = list(PHRASINGS)
    setups = [("mixture", all_tasks), ("translation-only", ["translation"])]
    for name, tasks in setups:
        data = WORK / f"{name}.jsonl"
        written = write_mixture(data, tasks, args.per_task)
        print(f"{name}: {written:,} conversations → {data}", flush=True)
        run = WORK / name
        start = time.perf_counter()
        train(data, run, args.minutes)
        minutes = (time.perf_counter() - start) / 60
        found = serve_and_score(run, all_tasks if name == "mixture" else tasks, args.eval)
        for kind in ("seen", "held out"):
            cell = lambda task, kind=kind, found=found: f"{found[(task, kind)]:.1f}" if (task, kind) in found else "—"
            append_row(SECTION, HEADER, [time.strftime("%Y-%m-%d"), machine(), "transformer-lm 4×256, context 256, sentencepiece 4k",
                                         f"{name} ({written:,} conversations)", f"{minutes:.1f}", kind, cell("translation"),
                                         cell("sentiment"), cell("summary"), cell("continuation"), f"`{command}`"])


if __name__ == "__main__":
    main()
