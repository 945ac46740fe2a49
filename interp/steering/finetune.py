"""A small supervised fine-tune: (instruction, answer) pairs in the model's chat template, loss on the answer only.

Made for building checkpoints on a CPU (the miniature of Ponkshe et al.'s setting in `analyses.miniature`), not for
large runs: a full fine-tune of every parameter with torch's AdamW, no LoRA (peft is not a dependency). Each pair
becomes the tokenizer's own chat template of a user turn and an assistant turn; the loss is the mean cross-entropy
over the assistant turn's tokens, its end-of-turn marker included (the tokens after the template's generation
prompt), so the model learns both what to say and where to stop. Batches are left-padded by `Model.pad` (as every
forward in this library), so the answers sit in the last columns and only those columns are unembedded
(`logits_to_keep`). Shuffling is seeded; the loss of every step is kept, and the run is a `Result` whose figure is
the loss curve. The model is a private copy loaded from `source` for training, never a caller's model; the tuned
weights are written as a checkpoint folder plain transformers loads (config, tokenizer, safetensors), atomically.

The learning rate is constant by default; `scheduler="cosine"` with `warmup_ratio` follows transformers'
`get_cosine_schedule_with_warmup` (a linear warm-up over ceil(warmup_ratio * steps) steps, then a half cosine to
zero), the schedule of Ponkshe et al.'s reference fine-tunes (github.com/CERT-Lab/safety-subspaces, `finetune.py`:
`lr_scheduler_type="cosine"`, `warmup_ratio=0.02`). That reference trains with a batch of one and 32 steps of
gradient accumulation, in bf16, on its own prompt template; here a batch is one optimiser step, in float32, on the
model's chat template.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.core.result import Result
from interp.core.runner import forward
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model

SIDECAR = "interp_finetune.json"
SCHEDULERS = ("constant", "cosine")


@dataclass
class FineTuneOptions:
    epochs: int = 2
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimiser steps (None: all epochs)
    scheduler: str = "constant"  # learning-rate schedule: constant, or cosine (with warmup_ratio)
    warmup_ratio: float = 0.0  # share of the steps with a linear warm-up (cosine only)
    device: str | None = None  # None: the library's default device
    progress: bool = True

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InterpError(f"{name} must be a positive integer, got {v!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise InterpError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if not self.lr > 0:
            raise InterpError(f"lr must be positive, got {self.lr!r}")
        if self.scheduler not in SCHEDULERS:
            raise InterpError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not 0 <= self.warmup_ratio < 1 or (self.warmup_ratio and self.scheduler == "constant"):
            raise InterpError(f"warmup_ratio must be in [0, 1) and is used by the cosine scheduler only; got "
                              f"{self.warmup_ratio!r} with scheduler={self.scheduler!r}")


def lr_factor(step: int, total: int, options: FineTuneOptions) -> float:
    """The multiplier of the learning rate at optimiser step `step` (0-based) of `total`: 1 (constant), or
    transformers' cosine schedule with a linear warm-up over ceil(warmup_ratio * total) steps."""
    if options.scheduler == "constant":
        return 1.0
    warmup = math.ceil(options.warmup_ratio * total)
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class FineTune(Result):
    """A finished fine-tune: where it came from and went, and the loss of every optimiser step."""

    title = "Fine-tune"
    source: str
    out: Path
    n_pairs: int
    losses: list[float]
    seconds: float
    options: FineTuneOptions = field(default_factory=FineTuneOptions)

    def summary(self) -> dict:
        return {"source": self.source, "out": str(self.out), "pairs": self.n_pairs, "steps": len(self.losses),
                "loss_first": self.losses[0], "loss_last": self.losses[-1], "seconds": round(self.seconds, 1),
                "options": asdict(self.options), "losses": self.losses}

    def figures(self) -> dict[str, go.Figure]:
        fig = go.Figure(go.Scatter(x=list(range(1, len(self.losses) + 1)), y=self.losses, mode="lines+markers"))
        fig.update_layout(title=f"fine-tune of {self.source}: loss on answer tokens", xaxis_title="step",
                          yaxis_title="mean cross-entropy (nats/token)")
        return {"loss": fig}


def check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, dict)) or len(pairs) == 0:
        raise InterpError("pairs must be a non-empty list of (instruction, answer) string pairs")
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise InterpError(f"pair {i} is not an (instruction, answer) pair of non-empty strings: {pair!r}")
        out.append((pair[0], pair[1]))
    return out


def chat_tokens(model: "Model", instruction: str, answer: str) -> tuple[list[int], int]:
    """The token ids of the chat (user turn, assistant turn) and the index of the first answer token: the tokens
    after the template's generation prompt (the answer and the template's end of turn)."""
    prompt = model.format_chat(instruction)
    full = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise InterpError(f"the chat template of {model.name} does not write an assistant turn after its generation "
                          "prompt; this fine-tune needs a template that does")
    p_ids, ids = model.encode([prompt, full])
    start = next((i for i, (a, b) in enumerate(zip(p_ids, ids)) if a != b), len(p_ids))
    if start >= len(ids):
        raise InterpError(f"the answer {answer[:40]!r} adds no token to its prompt")
    return ids, start


def batch_loss(model: "Model", rows: Sequence[tuple[list[int], int]]) -> Tensor:
    """Mean cross-entropy of the answer tokens of left-padded `rows` (ids, first answer index)."""
    batch = model.pad([ids for ids, _ in rows])
    width = batch.input_ids.shape[1]
    n_answer = [len(ids) - start for ids, start in rows]
    span = max(n_answer)
    out = forward(model, batch, logits=span + 1)  # columns width-span-1 .. width-1
    assert out.logits is not None  # logits were asked for and the forward ran to the end
    logits = out.logits[:, :-1].float()  # these predict the tokens at columns width-span .. width-1
    targets: Int[Tensor, "b span"] = batch.input_ids[:, width - span:].clone()
    cols = torch.arange(span, device=targets.device)
    targets[cols[None] < (span - torch.tensor(n_answer, device=targets.device))[:, None]] = -100
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def fine_tune(source: str | os.PathLike, pairs: Sequence[tuple[str, str]], out: str | os.PathLike,
              options: FineTuneOptions | None = None) -> FineTune:
    """Fine-tune a private copy of `source` on (instruction, answer) `pairs` and write it to `out` (new or empty)."""
    from interp.core.loading import load
    from interp.steering.orthogonalize import check_export_dir, write_checkpoint

    options = options or FineTuneOptions()
    options.check()
    pairs = check_pairs(pairs)
    check_export_dir(out)
    model = load(source, device=options.device, dtype=torch.float32)  # our own copy: it is trained in place
    rows = [chat_tokens(model, q, a) for q, a in pairs]
    hf = model.hf
    hf.train()
    hf.requires_grad_(True)
    optimiser = torch.optim.AdamW(hf.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    gen = torch.Generator().manual_seed(options.seed)
    per_epoch = -(-len(rows) // options.batch_size)
    total = min(options.epochs * per_epoch, options.max_steps or options.epochs * per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: lr_factor(step, total, options))
    losses: list[float] = []
    start = time.perf_counter()
    with tqdm(total=total, desc=f"fine-tune {model.name}", unit="step", disable=not options.progress) as bar:
        while len(losses) < total:
            order = torch.randperm(len(rows), generator=gen).tolist()
            for b in range(0, len(order), options.batch_size):
                if len(losses) >= total:
                    break
                loss = batch_loss(model, [rows[i] for i in order[b:b + options.batch_size]])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(hf.parameters(), options.max_grad_norm)
                optimiser.step()
                schedule.step()
                optimiser.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update()
    seconds = time.perf_counter() - start
    hf.eval()
    hf.requires_grad_(False)
    result = FineTune(str(source), Path(out), len(rows), losses, seconds, options)
    meta = {k: v for k, v in result.summary().items() if k != "out"}
    write_checkpoint(hf, model.tokenizer, out, SIDECAR, meta)
    return result


__all__ = ["FineTuneOptions", "FineTune", "fine_tune", "chat_tokens", "batch_loss", "check_pairs", "lr_factor",
           "SCHEDULERS"]
