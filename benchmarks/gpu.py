"""GPU readiness: the library's fast paths timed on a randomly initialised model of a real shape, no download.

    python -m benchmarks.gpu --out gpu.json [--tokenizer DIR]    # Qwen2.5-1.5B's shape, bf16, on the GPU
    python -m benchmarks.gpu --tiny --out gpu_tiny.json          # the same code on the CPU: 2 layers, d=64, fp32
    python -m benchmarks.gpu --save-tokenizer DIR                # write the bundled Qwen2.5 tokenizer to DIR

The model is `Qwen2ForCausalLM` built from Qwen2.5-1.5B(-Instruct)'s config, written out below, with random
weights (seed 0): timings depend on the shape, not on the weights, so nothing needs downloading. It is wrapped
in `interp.Model` with a real Qwen2.5 tokenizer (its chat template gives every prompt the shared system-prompt
prefix that the KV-prefix paths reuse): by default the bundled model's, else `--tokenizer DIR` (a folder
written by `--save-tokenizer` on a machine that has the bundled model; 11 MB).

In one process, each against a baseline measured in the same run (medians of `Sizes.runs` rounds after a warm-up,
the order of methods rotating from round to round, `torch.cuda.synchronize` around every timing):

- capture: `model.capture(prompts, "hook_resid_post")` at every layer (last token by the default path; with the
  prefix cache forced on; forced off; every token) vs a bare forward of the same chat-formatted prompts (tokenisation included in both), and the
  decoder body without the unembedding (what the early stop saves);
- generation: greedy `hf.generate` of exactly `gen_tokens` tokens with a random direction ablated at every layer
  (`interp.Ablate`) vs plain;
- scoring: `interp.directions.scoring.ablation_scores` of many random candidate directions, many candidates per forward vs
  one candidate per forward (the same numbers: `max_abs_diff`);
- attack: the token-search engine (`interp.attacks.engine.TokenSearch`, probe loss with random weights at 1/3 and
  1/2 of the depth, fixed steps, no judge, no early stop) over N = 1, 4, 16 AdvBench behaviours searched
  together vs one at a time, as seconds per behaviour-step.

The JSON (written atomically) starts with the provenance (see `benchmarks.common`; on a machine without the
repository's .git, set BENCH_GIT_COMMIT). Besides torch and transformers (and what they install: tokenizers,
safetensors, tqdm, numpy) it needs only what the core imports: jaxtyping (with wadler_lindig) and, through the
`interp.attacks` package, plotly.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import generation_overhead, provenance, rounds, timed, write_result
from interp.attacks.engine import MASK, EngineConfig, TokenSearch, build_prompt
from interp.attacks.losses import ProbeLoss
from interp.core.interventions import Ablate
from interp.core.model import Model
from interp.core.subspace import Direction
from interp.data.prompts import dataset, dataset_path, read_behaviors
from interp.directions.scoring import ablation_scores
from interp.errors import InterpError

TOKENIZER_MODEL = "qwen2.5-coder-0.5b-instruct"  # the bundled model whose tokenizer (Qwen2.5's) is used
TEMPLATE = "{behavior}" + MASK * 6  # the attack CLI's default template

# Qwen2.5-1.5B-Instruct's config.json (Qwen/Qwen2.5-1.5B-Instruct), the fields that shape the computation.
QWEN25_1_5B = dict(
    model_type="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False,
    max_window_layers=21, attention_dropout=0.0, initializer_range=0.02, bos_token_id=151643, eos_token_id=151645,
)
# The same family and vocabulary (so the real tokenizer fits), small enough for a CPU test.
TINY = {**QWEN25_1_5B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "max_window_layers": 2}


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    capture_prompts: int
    gen_prompts: int
    gen_tokens: int
    score_candidates: int
    score_prompts: int
    rows_per_forward: int
    attack_n: tuple[int, ...]
    attack_steps: int
    attack_candidates: int
    runs: int  # timed rounds of capture, generation and scoring
    attack_runs: int  # timed rounds of each attack configuration


FULL_SIZES = Sizes(capture_prompts=32, gen_prompts=16, gen_tokens=64, score_candidates=32, score_prompts=16,
                   rows_per_forward=128, attack_n=(1, 4, 16), attack_steps=5, attack_candidates=64, runs=5, attack_runs=3)
TINY_SIZES = Sizes(capture_prompts=4, gen_prompts=2, gen_tokens=4, score_candidates=4, score_prompts=4,
                   rows_per_forward=8, attack_n=(1, 4, 16), attack_steps=2, attack_candidates=8, runs=2, attack_runs=1)


def default_tokenizer_dir() -> Path:
    """The prepared folder of the bundled Qwen2.5 model (which holds its tokenizer files)."""
    from interp.data.registry import is_prepared, model_dir

    if not is_prepared(TOKENIZER_MODEL):
        raise InterpError(f"no tokenizer: the bundled {TOKENIZER_MODEL} is not prepared here; pass --tokenizer DIR, a "
                          "folder written by `python -m benchmarks.gpu --save-tokenizer DIR` where it is")
    return model_dir(TOKENIZER_MODEL)


def make_config(values: dict):
    """The transformers config of `values` (a dict like `QWEN25_1_5B`)."""
    from transformers import AutoConfig

    kw = dict(values)
    return AutoConfig.for_model(kw.pop("model_type"), **kw)


def build_model(name: str, values: dict, tokenizer_dir: Path, dtype: torch.dtype, device: torch.device,
                seed: int = 0) -> Model:
    """A `Model` around a randomly initialised causal LM of the config `values`, with a saved tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = make_config(values)
    if len(tokenizer) > config.vocab_size:
        raise InterpError(f"the tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens, more than the model's "
                          f"vocabulary of {config.vocab_size}: give a Qwen2.5 tokenizer")
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: no slow CPU init of 1.5B parameters
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    hf.requires_grad_(False)
    return Model(hf, tokenizer, name=name, source=f"random init, seed {seed}")


# ----- the measurements -----

def measure_capture(model: Model, sizes: Sizes) -> dict:
    """`model.capture` of hook_resid_post at every layer vs a bare forward of the same prompts: the default path
    (no prefix cache on a GPU, see `interp.core.prefix.wanted`), the prefix cache forced on and off, every token."""
    prompts = dataset("harmless_train", n=sizes.capture_prompts)
    n = len(prompts)

    def batch():
        return model.tokenize(model.prepare_prompts(prompts)).inputs()

    methods = {
        "bare": lambda: model.hf(**batch(), use_cache=False),
        "body": lambda: model.hf.base_model(**batch(), use_cache=False),
        "capture": lambda: model.capture(prompts, "hook_resid_post", positions="last", batch_size=n, progress=False),
        "capture_prefix_cache": lambda: model.capture(prompts, "hook_resid_post", positions="last", batch_size=n,
                                                      progress=False, use_prefix_cache=True),
        "capture_no_prefix_cache": lambda: model.capture(prompts, "hook_resid_post", positions="last", batch_size=n,
                                                         progress=False, use_prefix_cache=False),
        "capture_all_tokens": lambda: model.capture(prompts, "hook_resid_post", positions="all", batch_size=n,
                                                    progress=False),
    }
    with torch.no_grad():
        times = rounds(methods, sizes.runs, 1, model.device)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {f"{k}_s": v for k, v in med.items()}
    out |= {f"{k}_ratio": med[k] / med["bare"] for k in methods if k != "bare"}
    out |= {"prompts": n, "tokens": int(model.tokenize(model.prepare_prompts(prompts)).attention_mask.sum()),
            "sites": f"hook_resid_post x {model.n_layers} layers", "times_s": times}
    return out


def measure_generation(model: Model, sizes: Sizes, seed: int = 0) -> dict:
    """Greedy generation with a random direction ablated at every layer vs plain."""
    g = torch.Generator().manual_seed(seed)
    direction = Direction.from_vector(torch.randn(model.d_model, generator=g))
    prompts = dataset("harmless_train", n=sizes.gen_prompts, seed=1)
    return generation_overhead(model, Ablate(direction), prompts, sizes.gen_tokens, sizes.runs)


def measure_scoring(model: Model, sizes: Sizes, seed: int = 0) -> dict:
    """Ablation scores of random candidate directions: many candidates per forward vs one per forward."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(sizes.score_candidates, model.d_model, generator=g), dim=-1)
    ids = model.encode(model.prepare_prompts(dataset("harmless_train", n=sizes.score_prompts, seed=2)))

    def reduce(logits: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return logits.float().log_softmax(-1).amax(-1)  # the top token's log-probability

    scores: dict[str, torch.Tensor] = {}

    def run(name: str, one: bool):
        def fn():
            scores[name] = ablation_scores(model, ids, directions, reduce, rows_per_forward=sizes.rows_per_forward,
                                           one_candidate_per_forward=one, desc=name)
        return fn

    times = rounds({"batched": run("batched", False), "one_at_a_time": run("one_at_a_time", True)}, sizes.runs, 1,
                   model.device)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batched_s": med["batched"], "one_at_a_time_s": med["one_at_a_time"],
            "speedup": med["one_at_a_time"] / med["batched"], "candidates": sizes.score_candidates,
            "prompts": len(ids), "rows_per_forward": sizes.rows_per_forward,
            "max_abs_diff": float((scores["batched"] - scores["one_at_a_time"]).abs().max()), "times_s": times}


def measure_attack(model: Model, sizes: Sizes, seed: int = 0) -> dict:
    """Seconds per behaviour-step of N behaviours searched together vs one at a time, for each N."""
    behaviors = read_behaviors(dataset_path("advbench"))[:max(sizes.attack_n)]
    prompts = [build_prompt(model, TEMPLATE, b.behavior, key=b.id) for b in behaviors]
    layers = sorted({model.n_layers // 3, model.n_layers // 2})
    g = torch.Generator().manual_seed(seed)
    loss = ProbeLoss(torch.randn(len(layers), model.d_model, generator=g) / model.d_model ** 0.5,
                     torch.zeros(len(layers)), layers)

    steps: dict[str, int] = {}  # behaviour-steps each search ran (a search may stop early when it stalls)

    def search(n: int, parallel: int, name: str):
        config = EngineConfig(steps=sizes.attack_steps, candidates=sizes.attack_candidates, parallel=parallel,
                              judge_every=0, judge_below=float("-inf"), max_seconds=None, seed=seed)

        def fn():
            results = TokenSearch(model, loss, config).run(prompts[:n], check=None, progress=False)
            steps[name] = sum(r.steps for r in results)
        return fn

    timed(search(1, 1, "warm-up"), model.device)  # also builds the disallowed-token table once
    by_n = {}
    for n in sizes.attack_n:
        times = rounds({"together": search(n, n, "together"), "one_at_a_time": search(n, 1, "one_at_a_time")},
                       sizes.attack_runs, 0, model.device)
        med = {k: statistics.median(v) for k, v in times.items()}
        by_n[str(n)] = {"together_s": med["together"], "one_at_a_time_s": med["one_at_a_time"],
                        "together_s_per_behaviour_step": med["together"] / steps["together"],
                        "one_at_a_time_s_per_behaviour_step": med["one_at_a_time"] / steps["one_at_a_time"],
                        "ratio": med["one_at_a_time"] / med["together"], "behaviour_steps": dict(steps),
                        "times_s": times}
    return {"loss": loss.describe(), "steps": sizes.attack_steps, "candidates": sizes.attack_candidates,
            "template": TEMPLATE, "by_n": by_n}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--tokenizer", type=Path, default=None, help=f"a saved Qwen2.5 tokenizer folder (default: {TOKENIZER_MODEL}'s)")
    ap.add_argument("--tiny", action="store_true", help="a tiny config (2 layers, d=64) in fp32 on the CPU, small sizes")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 (float32 with --tiny)")
    ap.add_argument("--save-tokenizer", type=Path, default=None, metavar="DIR",
                    help=f"only write {TOKENIZER_MODEL}'s tokenizer to DIR (to carry to a machine without it)")
    args = ap.parse_args(argv)

    if args.save_tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(default_tokenizer_dir())).save_pretrained(str(args.save_tokenizer))
        print(f"wrote the tokenizer to {args.save_tokenizer}")
        return {}
    if args.out is None:
        ap.error("--out FILE.json is required")
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device here: run on a GPU, or pass --tiny to run the same code on the CPU")
    dtype_name = args.dtype or ("float32" if args.tiny else "bfloat16")
    if not isinstance(getattr(torch, dtype_name, None), torch.dtype):
        ap.error(f"unknown dtype {dtype_name!r}; use bfloat16, float16 or float32")
    name, values, sizes = (("random-tiny-qwen2", TINY, TINY_SIZES) if args.tiny
                           else ("random-qwen2.5-1.5b-shape", QWEN25_1_5B, FULL_SIZES))

    start = time.perf_counter()
    model = build_model(name, values, args.tokenizer or default_tokenizer_dir(), getattr(torch, dtype_name), device)
    prov = provenance("benchmarks.gpu", argv, device)
    result: dict = {
        "model": {"name": model.name, "config": values, "parameters": sum(p.numel() for p in model.hf.parameters()),
                  "dtype": dtype_name, "attention": model.hf.config._attn_implementation},
        "sizes": asdict(sizes),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for name, measure in (("capture", measure_capture), ("generation", measure_generation),
                          ("scoring", measure_scoring), ("attack", measure_attack)):
        t = time.perf_counter()
        result[name] = measure(model, sizes)
        result[name]["seconds"] = time.perf_counter() - t
        print(name, {k: v for k, v in result[name].items() if not isinstance(v, dict)}, flush=True)
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    result["total_seconds"] = time.perf_counter() - start
    written = write_result(args.out, result, prov)
    print(f"wrote {args.out} ({result['total_seconds']:.0f} s)")
    return written


if __name__ == "__main__":
    main()
