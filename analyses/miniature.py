"""A miniature of Ponkshe et al.'s parameter-space setting, small enough to build on a CPU.

The paper starts from real (base, aligned) pairs such as Llama-3.2-1B and Llama-3.2-1B-Instruct, fine-tunes the
aligned model on useful data (GSM8K, ...) and asks where in weight space the fine-tune erodes safety. No base /
aligned pair ships with this toolkit offline, so this module makes a small one. It is a miniature, not a
replication: a 135M model, a few dozen examples, a few optimiser steps, refusal measured by substring matching.

- base: SmolLM2-135M-Instruct (bundled), which rarely refuses.
- aligned: the base fully fine-tuned (`interp.steering.finetune.fine_tune`) to refuse harmful requests: bundled
  harmful_train prompts, each answered with one of a few refusal templates written for this project (`REFUSALS`,
  drawn with a fixed seed), mixed with `n_helpful` Alpaca instructions and useful answers (32 by default), so that
  the aligned model resembles an instruct model that refuses selectively. With refusals only (`n_helpful=0`) it
  can learn to refuse everything, harmless prompts included.
- fine-tuned: the aligned model fully fine-tuned toward useful answers: bundled Alpaca instructions
  (harmless_train) answered by the bundled Qwen2.5-Coder-0.5B-Instruct (greedy), generated once and cached
  (`useful_answers`), so that reruns reuse them.
- evaluation (`evaluation`): held-out harmful prompts (harmful_val), held-out Alpaca instructions (harmless_val)
  for the judge's rate on harmless prompts, and the answer model's answers to those as the useful text.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from analyses.overlap import Evaluation
from interp.data.prompts import dataset
from interp.data.registry import cache_dir
from interp.errors import InterpError
from interp.io import append_jsonl, read_jsonl
from interp.steering.finetune import FineTune, FineTuneOptions, fine_tune

# Varied refusals, each containing a phrase of the substring judge's list (a test checks it).
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that request.",
    "I cannot assist with this. It could cause real harm to people.",
    "I'm sorry, I can't provide that. If you have another question, I'm happy to help.",
    "I am unable to help with that, because it could be used to hurt someone.",
    "Sorry, but I will not help with this request: it is harmful and may be illegal.",
    "I can't help with that. Is there something else I can do for you?",
    "I'm not able to give instructions for this. It could put people at risk.",
    "My apologies, but I cannot help with requests like this one.",
)


@dataclass
class MiniatureConfig:
    base: str = "smollm2-135m-instruct"
    answer_model: str = "qwen2.5-coder-0.5b-instruct"  # writes the useful answers (greedy, cached)
    answer_tokens: int = 48  # length of the useful answers
    n_refusal: int = 64  # harmful_train prompts with refusals (alignment)
    n_helpful: int = 32  # harmless_train instructions with useful answers mixed into the alignment data
    n_useful: int = 64  # harmless_train instructions with useful answers (the fine-tune)
    n_eval: int = 32  # held-out harmful prompts, and held-out instructions (harmless rate and useful text)
    eval_tokens: int = 32  # greedy tokens judged for refusal
    align: FineTuneOptions = field(default_factory=lambda: FineTuneOptions(epochs=2, batch_size=8, lr=1e-4))
    useful: FineTuneOptions = field(default_factory=lambda: FineTuneOptions(epochs=2, batch_size=8, lr=1e-4))
    seed: int = 0
    cache: Path | None = None  # the answers' JSONL cache folder (default: <interp cache>/overlap)


def refusal_pairs(prompts: Sequence[str], seed: int = 0) -> list[tuple[str, str]]:
    """Each prompt with a refusal template drawn with a fixed seed."""
    rng = random.Random(seed)
    return [(p, rng.choice(REFUSALS)) for p in prompts]


def answers_cache(model: str, max_new_tokens: int, folder: str | os.PathLike | None = None) -> Path:
    """The JSONL file caching `model`'s greedy answers of `max_new_tokens` tokens."""
    name = Path(str(model)).name or str(model)
    return Path(folder or cache_dir() / "overlap") / f"answers-{name}-t{max_new_tokens}.jsonl"


def useful_answers(prompts: Sequence[str], model: str = "qwen2.5-coder-0.5b-instruct", max_new_tokens: int = 48,
                   cache: str | os.PathLike | None = None, batch_size: int = 16) -> list[str]:
    """`model`'s greedy chat answers to `prompts`, from the cache where present; the missing ones are generated
    (the model is loaded only then) and appended to the cache, so a killed run keeps what it finished."""
    path = answers_cache(model, max_new_tokens, cache)
    known = {row["prompt"]: row["answer"] for row in read_jsonl(path) if isinstance(row, dict) and "prompt" in row}
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    if missing:
        from interp.core.loading import load

        m = load(model)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            for p, a in zip(chunk, m.generate(chunk, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=True)):
                known[p] = a if a.strip() else "."
                append_jsonl(path, {"prompt": p, "answer": known[p], "model": str(model), "max_new_tokens": max_new_tokens})
    return [known[p] for p in prompts]


def evaluation(options: MiniatureConfig) -> Evaluation:
    """Held-out harmful prompts, held-out instructions and the answer model's answers to them."""
    harmless = dataset("harmless_val", n=options.n_eval, seed=options.seed)
    answers = useful_answers(harmless, options.answer_model, options.answer_tokens, options.cache)
    return Evaluation(dataset("harmful_val", n=options.n_eval, seed=options.seed), harmless,
                      list(zip(harmless, answers)), max_new_tokens=options.eval_tokens)


@dataclass
class Miniature:
    base: str
    aligned: Path
    finetuned: Path
    align_run: FineTune
    useful_run: FineTune


def check(options: MiniatureConfig, out: str | os.PathLike) -> None:
    from interp.steering.orthogonalize import check_export_dir

    for name in ("n_refusal", "n_useful", "n_eval", "answer_tokens", "eval_tokens"):
        v = getattr(options, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InterpError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(options.n_helpful, bool) or not isinstance(options.n_helpful, int) or options.n_helpful < 0:
        raise InterpError(f"n_helpful must be a non-negative integer, got {options.n_helpful!r}")
    options.align.check()
    options.useful.check()
    check_export_dir(Path(out) / "aligned")
    check_export_dir(Path(out) / "finetuned")


def build(out: str | os.PathLike, options: MiniatureConfig | None = None) -> Miniature:
    """Write `out/aligned` and `out/finetuned` (see the module doc); the base stays the bundled model."""
    options = options or MiniatureConfig()
    check(options, out)
    out = Path(out)
    align = refusal_pairs(dataset("harmful_train", n=options.n_refusal, seed=options.seed), options.seed)
    pool = dataset("harmless_train", n=options.n_useful + options.n_helpful, seed=options.seed)
    helpful, useful = pool[:options.n_helpful], pool[options.n_helpful:]
    answers = useful_answers(pool, options.answer_model, options.answer_tokens, options.cache)
    helpful_pairs = list(zip(helpful, answers[:options.n_helpful]))
    useful_pairs = list(zip(useful, answers[options.n_helpful:]))
    align_run = fine_tune(options.base, align + helpful_pairs, out / "aligned", options.align)
    useful_run = fine_tune(out / "aligned", useful_pairs, out / "finetuned", options.useful)
    return Miniature(options.base, out / "aligned", out / "finetuned", align_run, useful_run)


__all__ = ["REFUSALS", "MiniatureConfig", "refusal_pairs", "answers_cache", "useful_answers", "evaluation",
           "Miniature", "build"]
