"""Reference: nanoGPT's CPU config in PyTorch, for side-by-side timing on the same machine.

    python bench/nanogpt_torch.py --data ../shared/data/tinyshakespeare/input.txt [--iters 2000]

A compact restatement of nanoGPT's `model.py` (pre-LayerNorm GPT, fused causal attention,
GELU MLP, weight tying, N(0, 0.02) init with scaled residual projections) and `train.py`
(random windows of `block_size`, AdamW betas (0.9, 0.99) with weight decay on matrices only,
linear warmup then cosine decay, gradient clipping 1.0, `eval_iters` validation batches every
`eval_interval` iterations). Prints one JSON line with the figures (each validation's loss with the loop's and the
process's seconds at that point, and the wall split into start-up, data, model, steps, validation and the rest);
needs `torch`.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the source tree: this Python need not have kerasllm installed
from kerasllm.train.timings import process_seconds  # noqa: E402  measured as kerasllm measures its own runs (stdlib only)


class Block(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, block, layers, heads, d, dropout):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "mlp_proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def model_and_optimizer(vocab: int, block: int):
    """nanoGPT's CPU config (4 layers, 4 heads, 128 dims, no dropout) and AdamW with decay on matrices only."""
    model = GPT(vocab, block, 4, 4, 128, 0.0)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    return model, optimizer


def main():
    startup = process_seconds()  # Python and `import torch`
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tick = time.perf_counter()
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.int64)
    cut = int(len(ids) * 0.9)
    splits = {"train": torch.from_numpy(ids[:cut]), "val": torch.from_numpy(ids[cut:])}
    block, batch = 64, 12

    def get_batch(split):
        data = splits[split]
        starts = torch.randint(len(data) - block, (batch,))
        return torch.stack([data[i:i + block] for i in starts]), torch.stack([data[i + 1:i + 1 + block] for i in starts])

    data_seconds, tick = time.perf_counter() - tick, time.perf_counter()
    model, optimizer = model_and_optimizer(len(chars), block)

    def lr_at(it, warmup=100, peak=1e-3, floor=1e-4, total=args.iters):
        if it < warmup:
            return peak * (it + 1) / (warmup + 1)
        ratio = min(1.0, (it - warmup) / max(total - warmup, 1))
        return floor + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak - floor)

    @torch.no_grad()
    def estimate(split):
        model.eval()
        losses = [model(*get_batch(split)).item() for _ in range(args.eval_iters)]
        model.train()
        return float(np.mean(losses))

    build_seconds = time.perf_counter() - tick
    val_losses, step_times, evals, eval_seconds = {}, [], [], 0.0
    started = time.perf_counter()
    for it in range(args.iters + 1):
        if it % args.eval_interval == 0 or it == args.iters:
            tick = time.perf_counter()
            val_losses[it] = estimate("val")
            eval_seconds += time.perf_counter() - tick
            evals.append({"iter": it, "val_loss": val_losses[it], "loop_seconds": time.perf_counter() - started,
                          "process_seconds": process_seconds(), "tokens": it * batch * block})
        if it == args.iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        tick = time.perf_counter()
        loss = model(*get_batch("train"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_times.append(time.perf_counter() - tick)
    loop = time.perf_counter() - started
    steps = statistics.median(step_times) * len(step_times)  # as kerasllm counts its steps: median × steps
    print(json.dumps({
        "framework": f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)",
        "iters": args.iters, "val_loss": val_losses, "ms_per_iter_mean": 1000 * loop / args.iters,
        "ms_per_iter_median": 1000 * statistics.median(step_times), "tokens_per_second": args.iters * batch * block / loop,
        "train_seconds": loop, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "evals": evals,
        "parameters": sum(p.numel() for p in model.parameters()),
        "timings": {"start-up": startup, "data": data_seconds, "build": build_seconds, "train steps": steps,
                    "validation": eval_seconds, "training loop, other": loop - steps - eval_seconds},
    }))


if __name__ == "__main__":
    main()
