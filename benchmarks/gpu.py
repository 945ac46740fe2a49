"""GPU readiness: every analysis of the library timed against its baseline in one run, on a randomly initialised
model of a real shape, no download.

    python -m benchmarks.gpu --out gpu.json [--shape 1.5b|7b] [--tokenizer DIR] [--only capture,generation]
    python -m benchmarks.gpu --tiny --device cpu --out gpu_tiny.json   # the same code on the CPU: 2 layers, d=64, fp32
    python -m benchmarks.gpu --save-tokenizer DIR                      # write the bundled Qwen2.5 tokenizer to DIR

The model is `Qwen2ForCausalLM` built from Qwen2.5-1.5B(-Instruct)'s or Qwen2.5-7B(-Instruct)'s config (`--shape`,
both written out below), in bf16, with random weights (seed 0): timings depend on the shape, not on the weights,
so nothing needs downloading. It is wrapped in `interp.Model` with a real Qwen2.5 tokenizer (its chat template
gives every prompt the shared system-prompt prefix that the KV-prefix paths reuse): by default the bundled
model's, else `--tokenizer DIR` (a folder written by `--save-tokenizer` on a machine that has the bundled model;
11 MB).

Prompt length: the prompts of capture, generation, scoring, patching, DAS and likelihoods are brought to
`Sizes.prompt_tokens` tokens: a dataset prompt by its own text repeated before it (`lengthen`; the chat
template's system prefix comes on top), a task's clean/corrupted pair by the same filler before both
(`lengthen_task`), a TruthfulQA question by its own text repeated so that the whole multiple-choice prompt
(instruction, few-shot primer, question) reaches that length. The attack's prompts (its template) and the probes'
(question, answer) texts (whose capture is not what is timed) keep their own length.

Timing: in one process, each method against a baseline measured in the same run, in rotating rounds (the order of
methods rotating from round to round) after an untimed warm-up round (the attack: one warm-up search); medians
of `Sizes.runs` rounds (`Sizes.loop_runs` where the baseline is a slow one-at-a-time loop, `Sizes.attack_runs` for
the attack). On CUDA
each call is timed by CUDA events and its peak memory read (`benchmarks.common.measured_rounds`); on the CPU by
perf_counter. Every measurement reports `<method>_s` (median), `<method>_ratio` (its median over the baseline's),
`spread` ((max - min) / median of each method's rounds: how stable the median is), `peak_memory_gib` and
`working_memory_gib` (per method: the peak allocated during its calls, copies of the model included, and the rise
of that peak over what was allocated when a call began; None on the CPU) and `times_s` (every round). Where a
method computes the same numbers as its baseline, `max_abs_diff` is the largest difference between them (over all
such methods; `max_abs_diff_by_method` per method). A method that cannot run here (a backend package missing, a backend that cannot wrap the model) is left
out and its reason recorded under `not_measured`.

The measurements (top-level keys of the JSON):

- capture: `model.capture(prompts, "hook_resid_post")` at every layer (last token by the default path; with the
  prefix cache forced on; forced off; every token) vs a bare forward of the same chat-formatted prompts
  (tokenisation included in both), the decoder body without the unembedding (what the early stop saves),
  TransformerLens's `run_with_cache` (names filter, every token) on its `TransformerBridge`, and one nnsight trace
  (`interp.core.backends.nnsight_backend`: last token, stopped after the last layer). Checked: the last-token
  values of every method against the default capture's.
- generation: greedy `hf.generate` of exactly `gen_tokens` tokens with a random direction ablated at every layer
  (`interp.Ablate`) vs plain, and the same ablation through TransformerLens (`bridge.hooks` + `bridge.generate`)
  and nnsight (`generate` with the edits at every step). Checked: one steered forward's last-token logits in each
  framework against ours, and the share of generated tokens that agree.
- scoring: `interp.directions.scoring.ablation_scores` of many random candidate directions, many candidates per
  forward vs one candidate per forward.
- patching: the residual-stream sweep of `interp.circuits.patching` (`hook_resid_pre` at every layer x the last
  `patch_positions` positions, IOI items) batched vs one location per forward.
- probes: per-head logistic probes (`probes.LinearProbes`) on [pairs, layer, head, d_head] `attn.hook_z`
  activations of TruthfulQA (question, answer) pairs, on the model's device, vs scikit-learn's LogisticRegression
  fitted head by head on the CPU (`probe_sklearn_heads` heads drawn at random, the loop's time scaled to every
  head, as `benchmarks.truthful.compare_probes` does). Checked: validation probabilities of the compared heads.
- das: `interp.circuits.das.train` for a fixed number of epochs (no early stop) at `hook_resid_post` of the middle
  layer, the library's interchange (prefix keys and values reused, layers below the site skipped) vs the same
  training over full forwards of whole prompts. There is no form that trains several sites together (recorded).
  Checked: the training curves and the learnt basis.
- likelihoods: TruthfulQA multiple-choice continuation log-probabilities (`interp.core.likelihood.continuations`,
  as `analyses.truthful` scores MC1/MC2) with the prompt prefix cache on and off vs one continuation per forward.
- attack: the token-search engine (`interp.attacks.engine.TokenSearch`, probe loss with random weights at 1/3 and
  1/2 of the depth, fixed steps, no judge, no early stop) over N = 1, 4, 16 AdvBench behaviours searched
  together vs one at a time, as seconds per behaviour-step.

TransformerLens and nnsight each run on their own copy of the weights (the bridge rewires the HF model it wraps
and switches it to eager attention; nnsight replaces every module's forward with its own dispatcher): the model
the library's own paths run on stays untouched. The copies live through capture and generation and are freed
after them; with the 7B shape the three copies' bf16 weights take 3 x 14.2 GiB.

Duration (an estimate from the sizes and the kernel-launch-bound loops, not a measurement): the 1.5B shape with
FULL_SIZES about five minutes on one H100 (four to eight), generation (four methods, 6 rounds each), the attack
and the one-at-a-time loops taking the largest shares; the 7B shape several times that, more than one 10-minute
command: split it with `--only` (e.g. `--only capture,generation,scoring,patching` then
`--only probes,das,likelihoods,attack`, each with its own `--out`). The JSON is rewritten (atomically) after each
measurement, so a run cut short keeps what it finished; a measurement that fails is recorded with its error and
traceback, the run goes on, and the command fails at the end.

The JSON starts with the provenance (see `benchmarks.common`; on a machine without the repository's .git, set
BENCH_GIT_COMMIT). Besides torch and transformers (and what they install) it needs what the core imports
(jaxtyping, plotly through `interp.attacks`), scikit-learn for the probes' baseline, and transformer-lens and
nnsight for those methods (recorded as not measured where missing).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import random
import statistics
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from benchmarks.common import generate_kwargs, measured_rounds, provenance, ratios, timed_peak, write_result
from interp.attacks.engine import MASK, EngineConfig, TokenSearch, build_prompt
from interp.attacks.losses import ProbeLoss
from interp.circuits import das
from interp.circuits import patching as P
from interp.circuits.tasks import TaskTokens, make_task
from interp.core.interventions import Ablate, Intervention, Patch, SubspacePatch
from interp.core.likelihood import continuations
from interp.core.model import Model, TokenBatch
from interp.core.prefix import wanted
from interp.core.runner import forward
from interp.core.sites import Site
from interp.core.subspace import Direction
from interp.data.prompts import dataset, dataset_path, read_behaviors
from interp.data.truthfulqa import Question, mc_prompts, read_questions
from interp.directions.scoring import ablation_scores
from interp.errors import InterpError

TOKENIZER_MODEL = "qwen2.5-coder-0.5b-instruct"  # the bundled model whose tokenizer (Qwen2.5's) is used
TEMPLATE = "{behavior}" + MASK * 6  # the attack CLI's default template
FILLER = "The following notes were written over a long afternoon in the library, one after the other."  # task prompts' filler
PACKAGES = ("transformer-lens", "nnsight", "scikit-learn")

# Qwen2.5-1.5B-Instruct's config.json (Qwen/Qwen2.5-1.5B-Instruct), the fields that shape the computation.
QWEN25_1_5B = dict(
    model_type="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False,
    max_window_layers=21, attention_dropout=0.0, initializer_range=0.02, bos_token_id=151643, eos_token_id=151645,
)
# Qwen2.5-7B-Instruct's config.json (Qwen/Qwen2.5-7B-Instruct): untied embeddings, a larger vocabulary.
QWEN25_7B = {**QWEN25_1_5B, "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064, "max_window_layers": 28,
             "tie_word_embeddings": False}
# The same family and vocabulary (so the real tokenizer fits), small enough for a CPU test.
TINY = {**QWEN25_1_5B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "max_window_layers": 2}
SHAPES = {"1.5b": ("random-qwen2.5-1.5b-shape", QWEN25_1_5B), "7b": ("random-qwen2.5-7b-shape", QWEN25_7B)}


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    capture_prompts: int
    gen_prompts: int
    gen_tokens: int
    score_candidates: int
    score_prompts: int
    rows_per_forward: int  # rows per forward of the batched scoring and patching sweeps
    attack_n: tuple[int, ...]
    attack_steps: int
    attack_candidates: int
    runs: int  # timed rounds of capture, generation, scoring and probes
    attack_runs: int  # timed rounds of each attack configuration
    prompt_tokens: int  # every prompt's length in tokens (module docstring)
    patch_items: int  # IOI items of the patching sweep
    patch_positions: int  # the last positions swept (at every layer)
    probe_questions: int  # TruthfulQA questions whose (question, answer) pairs the probes are fitted on
    probe_sklearn_heads: int  # heads scikit-learn fits (its time scaled to every head)
    das_items: int  # IOI items DAS is trained, validated and tested on
    das_batch: int
    das_epochs: int  # fixed: no early stop
    das_k: int
    mc_questions: int  # TruthfulQA questions scored (every answer of each)
    loop_runs: int  # timed rounds where the baseline is a one-at-a-time loop (patching, DAS, likelihoods)


FULL_SIZES = Sizes(capture_prompts=64, gen_prompts=32, gen_tokens=32, score_candidates=32, score_prompts=32,
                   rows_per_forward=128, attack_n=(1, 4, 16), attack_steps=5, attack_candidates=64, runs=5,
                   attack_runs=3, prompt_tokens=256, patch_items=32, patch_positions=4, probe_questions=64,
                   probe_sklearn_heads=48, das_items=64, das_batch=16, das_epochs=2, das_k=4, mc_questions=16,
                   loop_runs=3)
TINY_SIZES = Sizes(capture_prompts=4, gen_prompts=2, gen_tokens=4, score_candidates=4, score_prompts=4,
                   rows_per_forward=8, attack_n=(1, 4, 16), attack_steps=2, attack_candidates=8, runs=2, attack_runs=1,
                   prompt_tokens=48, patch_items=4, patch_positions=3, probe_questions=12, probe_sklearn_heads=8,
                   das_items=12, das_batch=4, das_epochs=2, das_k=2, mc_questions=4, loop_runs=1)


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
    with torch.device(device):  # initialise on the device: no slow CPU init of billions of parameters
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    hf.requires_grad_(False)
    return Model(hf, tokenizer, name=name, source=f"random init, seed {seed}")


# ----- prompts of a given length -----

def _ids(model: Model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False).input_ids


def _tile(unit: list[int], n: int) -> list[int]:
    """The last `n` ids of `unit` repeated often enough ([] for n <= 0)."""
    return (unit * -(-n // len(unit)))[-n:] if n > 0 else []


def lengthen(model: Model, text: str, tokens: int) -> str:
    """`text` preceded by copies of itself (each followed by a blank line), cut at the front so that the whole is
    `tokens` tokens of the text's own (no special tokens, no chat template) and ends with `text` unchanged; a text
    of `tokens` tokens or more is returned as it is. Decoding and encoding again may move the count by a token
    where the cut splits a character."""
    ids = _ids(model, text)
    if len(ids) >= tokens:
        return text
    return model.tokenizer.decode(_tile(_ids(model, text + "\n\n"), tokens - len(ids)) + ids)


def lengthen_prompts(model: Model, prompts: Sequence[str], tokens: int) -> list[str]:
    """`lengthen` of every prompt."""
    return [lengthen(model, p, tokens) for p in prompts]


def lengthen_task(model: Model, tokens: TaskTokens, length: int) -> TaskTokens:
    """The task with the same filler ids put before every prompt (clean, corrupted and target; after the
    tokenizer's special prefix), so that the longest clean prompt is `length` tokens; pairs keep equal lengths and
    the answers stay as they are."""
    extra = length - max(len(r) for r in tokens.clean)
    if extra <= 0:
        return tokens
    filler = _tile(_ids(model, FILLER + "\n\n"), extra)
    k = len(model.special_prefix)

    def put(rows: list[list[int]]) -> list[list[int]]:
        return [r[:k] + filler + r[k:] for r in rows]

    return replace(tokens, clean=put(tokens.clean), corrupted=put(tokens.corrupted),
                   target=None if tokens.target is None else put(tokens.target))


def lengthen_questions(model: Model, questions: Sequence[Question], tokens: int) -> list[Question]:
    """The questions, each with its text lengthened (`lengthen`) so that its multiple-choice prompt (the QA form of
    `mc_prompts`: instruction, primer, question) is about `tokens` tokens; a prompt that long already is kept."""
    prompts, _ = mc_prompts(model, questions, "qa")
    out = []
    for q, ids in zip(questions, model.encode(prompts)):
        extra = tokens - len(ids)
        out.append(replace(q, question=lengthen(model, q.question, len(_ids(model, q.question)) + extra))
                   if extra > 0 else q)
    return out


def ioi_tokens(model: Model, n: int, length: int, seed: int = 0) -> TaskTokens:
    """`n` IOI items of one template, lengthened to `length` tokens (`lengthen_task`)."""
    return lengthen_task(model, make_task("ioi", n, seed, template=0).tokens(model), length)


# ----- timing and checks, shared by the measurements -----

def compare(methods: Mapping[str, Callable[[], object]], baseline: str, runs: int, device: torch.device,
            warmup: int = 1) -> dict[str, Any]:
    """Rotating rounds of `methods` (`benchmarks.common.measured_rounds`): per method its median seconds
    (`<name>_s`) and, for the others, the ratios of `benchmarks.common.ratios`; `spread` ((max - min) /
    median per method), `peak_memory_gib` and `working_memory_gib` (per method: the peak allocated, and its rise
    over what was allocated when the call began; None on the CPU), `times_s` (every timed round)."""
    m = measured_rounds(dict(methods), runs, warmup, device)
    med = {k: statistics.median(v) for k, v in m.times.items()}
    out: dict[str, Any] = dict(ratios(m.times, baseline))
    out["spread"] = {k: (max(v) - min(v)) / med[k] for k, v in m.times.items()}
    out["peak_memory_gib"] = {k: None if p is None else p / 2**30 for k, p in m.peaks.items()}
    out["working_memory_gib"] = {k: None if p is None else p / 2**30 for k, p in m.working.items()}
    out["times_s"] = m.times
    return out


def keeping(store: dict[str, Any], name: str, fn: Callable[[], Any]) -> Callable[[], None]:
    """`fn` to be timed, its latest result kept as `store[name]` (for the checks after the rounds)."""
    def run() -> None:
        store[name] = fn()
    return run


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """The largest |a - b| (float32, on the CPU); the shapes must agree."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape:
        raise InterpError(f"cannot compare results of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).abs().max()) if a.numel() else 0.0


def checks(got: dict[str, Tensor], reference: str, names: Sequence[str]) -> dict[str, Any]:
    """`max_abs_diff`: the largest difference of any of `names`' results from the reference's (0.0 for none);
    `max_abs_diff_by_method`: per name."""
    by = {name: max_abs_diff(got[name], got[reference]) for name in names}
    return {"max_abs_diff": max(by.values(), default=0.0), "max_abs_diff_by_method": by}


# ----- TransformerLens and nnsight, each on its own copy of the model -----

class Others:
    """TransformerLens's and nnsight's backends (`interp.core.backends`), each over its own deep copy of the model
    (module docstring), built on first use. `get(name)` returns (backend, None), or (None, reason) where the
    package is missing or the backend cannot wrap the model; `close()` frees the copies."""

    def __init__(self, model: Model):
        self.model = model
        self._built: dict[str, tuple[Any, str | None]] = {}
        self.build_s: dict[str, float] = {}

    def get(self, name: str) -> tuple[Any, str | None]:
        if name not in self._built:
            t = time.perf_counter()
            self._built[name] = self._build(name)
            self.build_s[name] = time.perf_counter() - t
        return self._built[name]

    def _build(self, name: str) -> tuple[Any, str | None]:
        from interp.core.backends import EXTRAS

        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            return None, f"{extra} is not installed (pip install 'interp[{extra}]')"
        m = self.model
        twin = Model(copy.deepcopy(m.hf), m.tokenizer, name=m.name, source=m.source)
        try:
            if name == "transformer_lens":
                from interp.core.backends.tl import TransformerLensBackend

                backend: Any = TransformerLensBackend(twin)
                backend.bridge  # noqa: B018 (boots the bridge now, so that a failure is a reason, not an error later)
            else:
                from interp.core.backends.nnsight_backend import NnsightBackend

                backend = NnsightBackend(twin)
                backend.lm  # noqa: B018 (wraps the model now, likewise)
        except Exception as e:  # any failure of a third-party package to wrap the model: recorded, not fatal
            del twin
            return None, f"{name} could not wrap the model: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return backend, None

    def close(self) -> None:
        self._built.clear()
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()


def _apply(fns: Sequence[Callable], site: Site, x: Tensor) -> Tensor:
    """`x` through an intervention's hook functions at `site` (each returns a replacement or None)."""
    for fn in fns:
        y = fn(site, x)
        x = x if y is None else y
    return x


@contextmanager
def tl_steering(tl, intervention: Intervention) -> Iterator[None]:
    """The intervention's hooks as TransformerLens forward hooks on the bridge's hook points, for the block."""
    hooks = intervention.hooks(tl.model)
    fwd = [(site.name, lambda act, hook, site=site, fns=fns: _apply(fns, site, act)) for site, fns in hooks.items()]
    with tl.bridge.hooks(fwd_hooks=fwd):
        yield


def nnsight_edits(nn, intervention: Intervention, batch: TokenBatch) -> Callable[[], None]:
    """A function that, called inside an nnsight trace (or a generation step), replaces each module input or
    output the intervention's sites resolve to (`NnsightBackend.requests`, in the order the forward reaches them)
    with the hooks' result."""
    hooks = intervention.hooks(nn.model)
    plan = nn.requests(list(hooks), batch)

    def edit() -> None:
        for path, attr, sites in plan:
            envoy = nn.lm.get(path)
            if attr == "input":
                x = envoy.input
                for s in sites:
                    x = _apply(hooks[s], s, x)
                envoy.input = x
            else:
                value = envoy.output
                x = value[0] if isinstance(value, tuple) else value
                for s in sites:
                    x = _apply(hooks[s], s, x)
                envoy.output = (x, *value[1:]) if isinstance(value, tuple) else x
    return edit


# ----- the measurements -----

def measure_capture(model: Model, sizes: Sizes, others: Others) -> dict:
    """`model.capture` of hook_resid_post at every layer vs a bare forward of the same prompts: the default path
    (no prefix cache on a GPU, see `interp.core.prefix.wanted`), the prefix cache forced on and off, every token;
    TransformerLens's run_with_cache and an nnsight trace of the same sites. Checked: the last-token values."""
    prompts = lengthen_prompts(model, dataset("harmless_train", n=sizes.capture_prompts), sizes.prompt_tokens)
    n = len(prompts)
    names = [s.name for s in model.sites("hook_resid_post")]
    got: dict[str, Tensor] = {}

    def batch(m: Model = model) -> TokenBatch:
        return m.tokenize(m.prepare_prompts(prompts))

    def ours(name: str, positions: str = "last", **kw) -> Callable[[], None]:
        def run() -> Tensor:
            x = model.capture(prompts, "hook_resid_post", positions=positions, batch_size=n, progress=False, **kw)
            return x.stack("hook_resid_post") if positions == "last" else x.stack("hook_resid_post")[:, :, -1]
        return keeping(got, name, run)

    methods: dict[str, Callable[[], object]] = {
        "bare": lambda: model.hf(**batch().inputs(), use_cache=False),
        "body": lambda: model.hf.base_model(**batch().inputs(), use_cache=False),
        "capture": ours("capture"),
        "capture_prefix_cache": ours("capture_prefix_cache", use_prefix_cache=True),
        "capture_no_prefix_cache": ours("capture_no_prefix_cache", use_prefix_cache=False),
        "capture_all_tokens": ours("capture_all_tokens", positions="all"),
    }
    reasons: dict[str, str] = {}
    tl, why = others.get("transformer_lens")
    if tl is not None:
        def run_with_cache() -> Tensor:
            b = batch(tl.model)
            _, cache = tl.bridge.run_with_cache(b.input_ids, attention_mask=b.attention_mask,
                                                position_ids=b.position_ids, names_filter=names, use_cache=False)
            return torch.stack([cache[name][:, -1] for name in names], 1).float().cpu()
        methods["tl_run_with_cache"] = keeping(got, "tl_run_with_cache", run_with_cache)
    else:
        reasons["tl_run_with_cache"] = str(why)
    nn, why = others.get("nnsight")
    if nn is not None:
        sites = nn.model.sites("hook_resid_post")

        def trace() -> Tensor:
            values = nn.capture_batch(batch(nn.model), sites, lambda site, x: x[:, -1].detach().float().cpu(),
                                      nn.model.n_layers - 1)
            return torch.stack([values[s] for s in sites], 1)
        methods["nnsight_trace"] = keeping(got, "nnsight_trace", trace)
    else:
        reasons["nnsight_trace"] = str(why)
    with torch.no_grad():
        out = compare(methods, "bare", sizes.runs, model.device)
    out |= checks(got, "capture", [k for k in got if k != "capture"])
    out |= {"prompts": n, "tokens": int(batch().attention_mask.sum()), "sites": f"hook_resid_post x {model.n_layers} layers",
            "attention": {"ours/nnsight": model.hf.config._attn_implementation,
                          "tl": tl.model.hf.config._attn_implementation if tl is not None else None},
            "not_measured": reasons}
    return out


def measure_generation(model: Model, sizes: Sizes, others: Others, seed: int = 0) -> dict:
    """Greedy generation with a random direction ablated at every layer vs plain, and the same ablation through
    TransformerLens and nnsight. Checked (untimed): one steered forward's last-token logits in each framework
    against ours, and the share of generated tokens equal to ours."""
    g = torch.Generator().manual_seed(seed)
    ablation = Ablate(Direction.from_vector(torch.randn(model.d_model, generator=g)))
    prompts = lengthen_prompts(model, dataset("harmless_train", n=sizes.gen_prompts, seed=1), sizes.prompt_tokens)
    kw = generate_kwargs(model, prompts, sizes.gen_tokens)
    batch = model.tokenize(model.prepare_prompts(prompts))
    new = sizes.gen_tokens
    tokens: dict[str, Tensor] = {}
    logits: dict[str, Tensor] = {}

    def steered() -> Tensor:
        with model.intervene(ablation):
            return model.hf.generate(**kw)[:, -new:]

    with torch.no_grad(), model.intervene(ablation):
        logits["steered"] = model.hf(**batch.inputs(), use_cache=False).logits[:, -1]
    methods: dict[str, Callable[[], object]] = {"plain": lambda: model.hf.generate(**kw),
                                                "steered": keeping(tokens, "steered", steered)}
    reasons: dict[str, str] = {}
    tl, why = others.get("transformer_lens")
    if tl is not None:
        def tl_generate() -> Tensor:
            with tl_steering(tl, ablation):
                out = tl.bridge.generate(kw["input_ids"], attention_mask=kw["attention_mask"], max_new_tokens=new,
                                         do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False)
            return out[:, -new:]
        with torch.no_grad(), tl_steering(tl, ablation):
            logits["tl_steered"] = tl.bridge(batch.input_ids, attention_mask=batch.attention_mask,
                                             position_ids=batch.position_ids)[:, -1]
        methods["tl_steered"] = keeping(tokens, "tl_steered", tl_generate)
    else:
        reasons["tl_steered"] = str(why)
    nn, why = others.get("nnsight")
    if nn is not None:
        edit = nnsight_edits(nn, ablation, batch)

        def nn_generate() -> Tensor:
            with nn.lm.generate(**kw) as tracer:
                for _ in tracer.iter[:new]:  # bounded: min_new_tokens makes exactly `new` steps
                    edit()
                out = tracer.result.save()
            return out[:, -new:]
        with torch.no_grad():
            with nn.lm.trace(**batch.inputs(), use_cache=False):
                edit()
                last = nn.lm.output.logits[:, -1].save()
        logits["nnsight_steered"] = last
        methods["nnsight_steered"] = keeping(tokens, "nnsight_steered", nn_generate)
    else:
        reasons["nnsight_steered"] = str(why)
    with torch.no_grad():
        out = compare(methods, "plain", sizes.runs, model.device)
    others_done = [k for k in logits if k != "steered"]
    out |= checks(logits, "steered", others_done)
    out["check"] = "last-token logits of one steered forward, each framework vs ours"
    out["tokens_agree"] = {k: float((tokens[k].cpu() == tokens["steered"].cpu()).float().mean()) for k in others_done}
    out |= {"plain_generate_s": out["plain_s"], "steered_generate_s": out["steered_s"], "runs": sizes.runs,
            "new_tokens": new, "prompts": len(prompts), "prompt_tokens": int(batch.input_ids.shape[1]),
            "not_measured": reasons}
    return out


def measure_scoring(model: Model, sizes: Sizes, others: Others, seed: int = 0) -> dict:
    """Ablation scores of random candidate directions: many candidates per forward vs one per forward."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(sizes.score_candidates, model.d_model, generator=g), dim=-1)
    prompts = lengthen_prompts(model, dataset("harmless_train", n=sizes.score_prompts, seed=2), sizes.prompt_tokens)
    ids = model.encode(model.prepare_prompts(prompts))

    def reduce(logits: Tensor, prompt: Tensor) -> Tensor:
        return logits.float().log_softmax(-1).amax(-1)  # the top token's log-probability

    scores: dict[str, Tensor] = {}

    def run(name: str, one: bool) -> Callable[[], None]:
        return keeping(scores, name, lambda: ablation_scores(model, ids, directions, reduce, one_candidate_per_forward=one,
                                                             rows_per_forward=sizes.rows_per_forward, desc=name))

    out = compare({"batched": run("batched", False), "one_at_a_time": run("one_at_a_time", True)}, "one_at_a_time",
                  sizes.runs, model.device)
    return out | checks(scores, "one_at_a_time", ["batched"]) | {
        "speedup": out["one_at_a_time_s"] / out["batched_s"], "candidates": sizes.score_candidates,
        "prompts": len(ids), "prompt_tokens": max(len(r) for r in ids), "rows_per_forward": sizes.rows_per_forward}


def measure_patching(model: Model, sizes: Sizes, others: Others, seed: int = 0) -> dict:
    """The residual-stream patching sweep (every layer x the last `patch_positions` positions) of IOI items:
    batched vs one location per forward (the items batched, whole prompts)."""
    tokens = ioi_tokens(model, sizes.patch_items, sizes.prompt_tokens, seed)
    t = time.perf_counter()
    runs = P.prepare(model, tokens, [Site(i, "hook_resid_pre") for i in range(model.n_layers)])
    prepare_s = time.perf_counter() - t
    locations = P.grid_locations(model, "resid", sizes.patch_positions)
    grids: dict[str, Tensor] = {}
    methods = {
        "batched": keeping(grids, "batched", lambda: P.sweep(model, runs, locations,
                                                             rows_per_forward=sizes.rows_per_forward)),
        "one_location_per_forward": keeping(grids, "one_location_per_forward",
                                            lambda: P.sweep(model, runs, locations, one_location_per_forward=True)),
    }
    with torch.no_grad():
        out = compare(methods, "one_location_per_forward", sizes.loop_runs, model.device)
    return out | checks(grids, "one_location_per_forward", ["batched"]) | {
        "speedup": out["one_location_per_forward_s"] / out["batched_s"], "locations": len(locations),
        "grid": f"hook_resid_pre x {model.n_layers} layers x last {sizes.patch_positions} positions",
        "items": len(tokens), "prompt_tokens": len(tokens.clean[0]), "rows_per_forward": sizes.rows_per_forward,
        "prepare_s": prepare_s}


def measure_probes(model: Model, sizes: Sizes, others: Others, seed: int = 0) -> dict:
    """Per-head logistic probes on `attn.hook_z` of TruthfulQA (question, answer) pairs (labels: true / false
    answer; training on the first three quarters of the questions, validation on the rest): `LinearProbes`, all
    heads at once on the model's device, vs scikit-learn's LogisticRegression (C=1, lbfgs, float64, on the CPU)
    head by head on `probe_sklearn_heads` heads drawn at random, its time scaled to every head. Checked: the
    validation probabilities of the compared heads."""
    if importlib.util.find_spec("sklearn") is None:
        return {"not_measured": {"sklearn_loop": "scikit-learn is not installed"}}
    from sklearn.linear_model import LogisticRegression

    from analyses.truthful import head_activations
    from probes.linear import LinearProbes

    questions = read_questions(n=sizes.probe_questions)
    t = time.perf_counter()
    acts = head_activations(model, questions, progress=False)  # [pairs, layer, head, d_head], float32 on the CPU
    capture_s = time.perf_counter() - t
    labels = torch.tensor([label for q in questions for label in q.labels])
    owner = torch.tensor([i for i, q in enumerate(questions) for _ in q.labels])
    train = owner < max(1, round(0.75 * len(questions)))
    Xtr, Xva, ytr = acts[train], acts[~train], labels[train]
    Xtr_dev, Xva_dev = Xtr.to(model.device), Xva.to(model.device)  # where a GPU user's activations are
    L, H = acts.shape[1], acts.shape[2]
    heads = random.Random(seed).sample([(l, h) for l in range(L) for h in range(H)], min(sizes.probe_sklearn_heads, L * H))
    rows, cols = torch.tensor([l for l, _ in heads]), torch.tensor([h for _, h in heads])
    got: dict[str, Tensor] = {}

    def batched() -> Tensor:
        return LinearProbes("logistic", C=1.0, max_iter=100).fit(Xtr_dev, ytr).predict_proba(Xva_dev)[:, rows, cols]

    def sklearn_loop() -> Tensor:
        probs = []
        for l, h in heads:
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(Xtr[:, l, h].double().numpy(), ytr.numpy())
            probs.append(torch.from_numpy(clf.predict_proba(Xva[:, l, h].double().numpy())[:, 1]))
        return torch.stack(probs, 1)

    out = compare({"batched": keeping(got, "batched", batched), "sklearn_loop": keeping(got, "sklearn_loop", sklearn_loop)},
                  "sklearn_loop", sizes.runs, model.device)
    all_heads_s = out["sklearn_loop_s"] * L * H / len(heads)
    accuracy_diff = ((got["batched"] > 0.5) != (got["sklearn_loop"] > 0.5)).float().mean(0).max()
    return out | checks(got, "sklearn_loop", ["batched"]) | {
        "check": "validation P(true) of the compared heads", "max_prediction_disagreement": float(accuracy_diff),
        "sklearn_all_heads_s": all_heads_s, "speedup": all_heads_s / out["batched_s"],
        "heads": L * H, "sklearn_heads": len(heads), "train_pairs": int(train.sum()), "val_pairs": int((~train).sum()),
        "d_head": acts.shape[-1], "device": str(model.device), "capture_s": capture_s,
        "sklearn": "LogisticRegression(C=1.0, max_iter=1000), lbfgs, float64 features, one head at a time, CPU"}


def full_forward_run(model: Model, tokens: TaskTokens, site: str, source: Tensor, positions: list[int]) -> das.Run:
    """An `Interchange.run` over full forwards: the corrupted prompts of the items, whole, every layer, with the
    source's component inside the basis (the whole activation for basis None) patched in at `site` and
    `positions`; the last position's logits (float32). The same numbers as `interp.circuits.das.interchange`'s."""
    def run(items: Sequence[int], basis: Tensor | None) -> Tensor:
        items = list(items)
        src = source[items]
        patch = Patch(site, src, positions) if basis is None else SubspacePatch(site, basis, src, positions)
        logits = forward(model, model.pad([tokens.corrupted[i] for i in items]), edits=[patch]).logits
        assert logits is not None  # the last position's logits were asked for (the default)
        return logits.float()
    return run


def measure_das(model: Model, sizes: Sizes, others: Others, seed: int = 0) -> dict:
    """DAS at hook_resid_post of the middle layer on IOI items, `das_epochs` epochs (no early stop): the library's
    interchange vs the same training over full forwards (`full_forward_run`). Checked: the training curves and the
    learnt basis."""
    tokens = ioi_tokens(model, sizes.das_items, sizes.prompt_tokens, seed)
    site = f"blocks.{model.n_layers // 2}.hook_resid_post"
    t = time.perf_counter()
    problem = das.interchange(model, tokens, site, (-1,), batch_size=sizes.das_batch)
    interchange_s = time.perf_counter() - t
    full = replace(problem, run=full_forward_run(model, tokens, site, problem.source, [-1]))
    split = das.split_items(problem.n, seed)
    fits: dict[str, das.DASFit] = {}

    def train(name: str, p: das.Interchange) -> Callable[[], None]:
        return keeping(fits, name, lambda: das.train(p, sizes.das_k, split, seed, epochs=sizes.das_epochs,
                                                     patience=sizes.das_epochs, progress=False))

    out = compare({"das": train("das", problem), "full_forward": train("full_forward", full)}, "full_forward",
                  sizes.loop_runs, model.device)
    fit = fits["das"]

    def curves(f: das.DASFit) -> Tensor:
        return torch.tensor([f.curves["train_loss"], f.curves["val_loss"]])

    result = {name: torch.cat([curves(f).flatten(), f.subspace.basis.flatten()]) for name, f in fits.items()}
    return out | checks(result, "full_forward", ["das"]) | {
        "check": "training and validation losses per epoch, and the learnt basis",
        "speedup": out["full_forward_s"] / out["das_s"], "steps": fit.steps, "epochs": sizes.das_epochs,
        "das_s_per_step": out["das_s"] / fit.steps, "full_forward_s_per_step": out["full_forward_s"] / fit.steps,
        "forwards_per_epoch": fit.forwards_per_epoch, "site": site, "k": sizes.das_k, "items": problem.n,
        "batch_size": sizes.das_batch, "prompt_tokens": len(tokens.clean[0]), "interchange_s": interchange_s,
        "not_measured": {"several_sites_together": "interp.circuits.das trains one site per call: there is no form "
                                                   "that trains several sites or layers in one pass to compare"}}


def measure_likelihoods(model: Model, sizes: Sizes, others: Others) -> dict:
    """TruthfulQA multiple-choice log-probabilities of every answer (the QA form, as `analyses.truthful` scores
    MC1/MC2): batched continuations with the prompt prefix cache on and off vs one continuation per forward (whole
    text, no cache)."""
    questions = lengthen_questions(model, read_questions(n=sizes.mc_questions), sizes.prompt_tokens)
    prompts, answers = mc_prompts(model, questions, "qa")
    got: dict[str, Tensor] = {}

    def score(name: str, **kw) -> Callable[[], None]:
        return keeping(got, name, lambda: torch.cat(continuations(model, prompts, answers, progress=False, **kw).logprobs))

    methods = {"prefix_cache": score("prefix_cache", use_prefix_cache=True),
               "no_prefix_cache": score("no_prefix_cache", use_prefix_cache=False),
               "one_per_forward": score("one_per_forward", rows_per_forward=1, use_prefix_cache=False)}
    with torch.no_grad():
        out = compare(methods, "one_per_forward", sizes.loop_runs, model.device)
    lengths = [len(r) for r in model.encode(prompts)]
    return out | checks(got, "one_per_forward", ["prefix_cache", "no_prefix_cache"]) | {
        "default": "prefix_cache" if wanted(model, None) else "no_prefix_cache",
        "speedup": out["one_per_forward_s"] / min(out["prefix_cache_s"], out["no_prefix_cache_s"]),
        "questions": len(questions), "continuations": sum(len(a) for a in answers),
        "prompt_tokens": {"min": min(lengths), "max": max(lengths)}}


def measure_attack(model: Model, sizes: Sizes, others: Others, seed: int = 0) -> dict:
    """Seconds per behaviour-step of N behaviours searched together vs one at a time, for each N."""
    behaviors = read_behaviors(dataset_path("advbench"))[:max(sizes.attack_n)]
    prompts = [build_prompt(model, TEMPLATE, b.behavior, key=b.id) for b in behaviors]
    layers = sorted({model.n_layers // 3, model.n_layers // 2})
    g = torch.Generator().manual_seed(seed)
    loss = ProbeLoss(torch.randn(len(layers), model.d_model, generator=g) / model.d_model ** 0.5,
                     torch.zeros(len(layers)), layers)

    steps: dict[str, int] = {}  # behaviour-steps each search ran (a search may stop early when it stalls)

    def search(n: int, parallel: int, name: str) -> Callable[[], None]:
        config = EngineConfig(steps=sizes.attack_steps, candidates=sizes.attack_candidates, parallel=parallel,
                              judge_every=0, judge_below=float("-inf"), max_seconds=None, seed=seed)

        def fn() -> None:
            results = TokenSearch(model, loss, config).run(prompts[:n], check=None, progress=False)
            steps[name] = sum(r.steps for r in results)
        return fn

    timed_peak(search(1, 1, "warm-up"), model.device)  # also builds the disallowed-token table once
    by_n = {}
    for n in sizes.attack_n:
        row = compare({"together": search(n, n, "together"), "one_at_a_time": search(n, 1, "one_at_a_time")},
                      "one_at_a_time", sizes.attack_runs, model.device, warmup=0)
        row |= {"together_s_per_behaviour_step": row["together_s"] / steps["together"],
                "one_at_a_time_s_per_behaviour_step": row["one_at_a_time_s"] / steps["one_at_a_time"],
                "ratio": row["one_at_a_time_s"] / row["together_s"], "behaviour_steps": dict(steps)}
        by_n[str(n)] = row
    return {"loss": loss.describe(), "steps": sizes.attack_steps, "candidates": sizes.attack_candidates,
            "template": TEMPLATE, "by_n": by_n}


MEASUREMENTS: dict[str, Callable[[Model, Sizes, Others], dict]] = {
    "capture": measure_capture, "generation": measure_generation, "scoring": measure_scoring,
    "patching": measure_patching, "probes": measure_probes, "das": measure_das, "likelihoods": measure_likelihoods,
    "attack": measure_attack,
}
USE_OTHERS = ("capture", "generation")  # the measurements that run TransformerLens and nnsight


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _scalars(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float, str)) or v is None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--tokenizer", type=Path, default=None, help=f"a saved Qwen2.5 tokenizer folder (default: {TOKENIZER_MODEL}'s)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.5b", help="the config the random model is built from")
    ap.add_argument("--tiny", action="store_true", help="a tiny config (2 layers, d=64) in fp32 on the CPU, small sizes")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 (float32 with --tiny)")
    ap.add_argument("--only", default=None, help=f"comma-separated measurements to run (default: all of {', '.join(MEASUREMENTS)})")
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
    selected = list(MEASUREMENTS) if args.only is None else [m.strip() for m in args.only.split(",") if m.strip()]
    if unknown := [m for m in selected if m not in MEASUREMENTS]:
        ap.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device here: run on a GPU, or pass --tiny to run the same code on the CPU")
    dtype_name = args.dtype or ("float32" if args.tiny else "bfloat16")
    if not isinstance(getattr(torch, dtype_name, None), torch.dtype):
        ap.error(f"unknown dtype {dtype_name!r}; use bfloat16, float16 or float32")
    (name, values), sizes = (("random-tiny-qwen2", TINY), TINY_SIZES) if args.tiny else (SHAPES[args.shape], FULL_SIZES)

    start = time.perf_counter()
    model = build_model(name, values, args.tokenizer or default_tokenizer_dir(), getattr(torch, dtype_name), device)
    prov = provenance("benchmarks.gpu", argv, device)
    result: dict = {
        "model": {"name": model.name, "shape": "tiny" if args.tiny else args.shape, "config": values,
                  "parameters": sum(p.numel() for p in model.hf.parameters()), "dtype": dtype_name,
                  "attention": model.hf.config._attn_implementation},
        "sizes": asdict(sizes),
        "packages": {pkg: _version(pkg) for pkg in PACKAGES},
        "timing": "CUDA events, peak memory per call" if device.type == "cuda" else "perf_counter",
    }
    others = Others(model)
    failed: list[str] = []
    peak = 0.0
    for i, key in enumerate(selected):
        t = time.perf_counter()
        try:
            row = MEASUREMENTS[key](model, sizes, others)
        except Exception as e:  # recorded, and the run goes on: one failure must not lose a GPU session's results
            row = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            failed.append(key)
        row["seconds"] = time.perf_counter() - t
        if device.type == "cuda":
            peaks = [p for p in row.get("peak_memory_gib", {}).values() if p is not None]
            peak = max([peak, torch.cuda.max_memory_allocated(device) / 2**30, *peaks])
            result["peak_gpu_memory_gib"] = peak
        result[key] = row
        if not any(k in USE_OTHERS for k in selected[i + 1:]):
            others.close()  # the copies are not needed any more
        result["others_build_s"] = dict(others.build_s)
        result["total_seconds"] = time.perf_counter() - start
        write_result(args.out, result, prov)  # after every measurement: a run cut short keeps what it finished
        print(key, _scalars(row), flush=True)
    written = write_result(args.out, result, prov)
    print(f"wrote {args.out} ({result['total_seconds']:.0f} s)")
    if failed:
        raise InterpError(f"measurement(s) {', '.join(failed)} failed (their errors are in {args.out}): "
                          + "; ".join(f"{k}: {result[k]['error']}" for k in failed))
    return written


if __name__ == "__main__":
    main()
