"""Capture overhead: what reading `hook_resid_post` at every layer costs over a bare forward, per backend.

    python -m benchmarks.capture --model smollm2-135m-instruct --out capture.json [--runs 10] [--threads 1]

One process, one fixed batch (`--batch` rows of `--tokens` random token ids, full attention mask), built once so
that tokenisation is never timed. Each round times every method once, in turn (the order rotates from round to
round), so that a slow spell of a shared machine falls on all of them alike. Per method: the median over
`--runs` rounds after `--warmup` untimed ones; `*_ratio` is that median over bare's, `*_paired_ratio` the
median over rounds of the ratio within one round (steadier on a busy machine). Methods:

- bare: `model.hf(**batch, use_cache=False)`, the full model forward (final norm and unembedding included): the
  baseline a user compares with.
- body: the decoder stack and final norm without the unembedding (`model.hf.base_model`): hooks / body is the
  cost of the hooks themselves, with the saving from the early stop taken out.
- hooks: our default backend, `hook_resid_post` at every layer, last token, the forward stopped after the last
  layer (so the final norm and the unembedding are skipped: legitimate, and part of the saving).
- hooks_all_tokens: the same at every token.
- tl: TransformerLens 4 `run_with_cache` with a names filter on the `TransformerBridge` (all tokens, full forward),
  as a TransformerLens user would write it; tl_backend: our TransformerLens backend (last token, early stop).
- nnsight: our nnsight backend, one trace saving the same as hooks (last token, stopped after the last layer).

Each model is its own `Model` (TransformerLens switches its model to eager attention and rewires its modules).
Results go to a JSON file, written atomically: provenance (commit, command, machine, versions, date; see
`benchmarks.common`), seconds per method, ratios to bare, and the settings.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from typing import Callable

import torch

import interp
from benchmarks.common import provenance, ratios, rounds, write_result
from interp.core.backends.hooks import HooksBackend
from interp.core.backends.nnsight_backend import NnsightBackend
from interp.core.backends.tl import TransformerLensBackend
from interp.core.model import Model, TokenBatch, position_ids_for
from interp.core.positions import Positions, select
from interp.core.sites import Site


def random_batch(model: Model, batch: int, tokens: int, seed: int = 0) -> TokenBatch:
    """`batch` rows of `tokens` random ordinary token ids (no pads, so every row is exactly `tokens` long)."""
    g = torch.Generator().manual_seed(seed)
    special = set(model.tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(model.tokenizer.vocab_size) if i not in special])
    ids = ordinary[torch.randint(len(ordinary), (batch, tokens), generator=g)]
    mask = torch.ones_like(ids)
    return TokenBatch(ids.to(model.device), mask.to(model.device), position_ids_for(mask).to(model.device))


def reducer(batch: TokenBatch, positions: Positions) -> Callable[[Site, torch.Tensor], torch.Tensor]:
    """What `interp.core.capture` keeps of each value: the chosen positions, as float32 on the CPU."""
    return lambda site, x: select(x, batch.attention_mask, positions, 0).detach().float().cpu()


def methods(model: str, batch_size: int, tokens: int, dtype: torch.dtype, device: str) -> tuple[dict[str, Callable[[], object]], dict]:
    """The timed callables, each closing over its own prepared model and the shared batch."""
    load = lambda: interp.load(model, dtype=dtype, device=device)  # noqa: E731
    plain, tl_model, nn_model = load(), load(), load()
    batch = random_batch(plain, batch_size, tokens)
    sites = plain.sites("hook_resid_post")
    stop = plain.n_layers - 1
    last, every = reducer(batch, "last"), reducer(batch, "all")
    hooks, tl, nn = HooksBackend(plain), TransformerLensBackend(tl_model), NnsightBackend(nn_model)
    bridge = tl.bridge
    names = [s.name for s in sites]

    @torch.no_grad()
    def bare():
        return plain.hf(**batch.inputs(), use_cache=False)

    @torch.no_grad()
    def body():
        return plain.hf.base_model(**batch.inputs(), use_cache=False)

    @torch.no_grad()
    def run_with_cache():
        return bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask,
                                     position_ids=batch.position_ids, names_filter=names, use_cache=False)

    timed = {
        "bare": bare,
        "body": body,
        "hooks": lambda: hooks.capture_batch(batch, sites, last, stop),
        "hooks_all_tokens": lambda: hooks.capture_batch(batch, sites, every, stop),
        "tl": run_with_cache,
        "tl_backend": lambda: tl.capture_batch(batch, sites, last, stop),
        "nnsight": lambda: nn.capture_batch(batch, sites, last, stop),
    }
    info = {
        "model": plain.name,
        "n_layers": plain.n_layers,
        "sites": f"hook_resid_post x {len(sites)} layers",
        "attention": {"bare/hooks/nnsight": plain.hf.config._attn_implementation,
                      "tl": tl_model.hf.config._attn_implementation},
    }
    return timed, info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--runs", type=int, default=10, help="timed rounds (median reported); at least 5")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives steadier timings on a shared machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    if args.runs < 5:
        p.error("--runs must be at least 5 (the median of fewer is too noisy)")
    torch.set_num_threads(args.threads)
    timed, info = methods(args.model, args.batch, args.tokens, getattr(torch, args.dtype), args.device)
    times = rounds(timed, args.runs, args.warmup, args.device)
    result: dict = ratios(times, "bare")
    result["hooks_body_ratio"] = result["hooks_s"] / result["body_s"]  # the hooks' own cost, early-stop saving excluded
    result["settings"] = {
        **info, "batch": args.batch, "tokens": args.tokens, "runs": args.runs, "warmup": args.warmup,
        "device": args.device, "dtype": args.dtype,
        "versions": {pkg: version(pkg) for pkg in ("transformer-lens", "nnsight")},
    }
    result["times_s"] = times
    out = write_result(args.out, result, provenance("benchmarks.capture", argv, args.device))
    for name in timed:
        ratio = f"  x{result[name + '_ratio']:.3f} (paired x{result[name + '_paired_ratio']:.3f})" if name != "bare" else ""
        print(f"{name:>17}: {result[name + '_s']:.3f} s{ratio}")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
