"""`interp directions extract | search | export-gguf`: refusal / acceptance directions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import typer

from interp.cli import common

app = typer.Typer(help="Refusal / acceptance directions.", no_args_is_help=True)


@app.command("extract")
@common.config_options("analyses.refusal", "RefusalConfig", skip=("one_candidate_per_forward",),
                       help={"shortlist": "candidates scored exactly after attribution ranking; 0 = all (GPU)",
                             "val_source": "bundled (the separate validation splits, --n-val of each) | carve (held "
                                           "out of the training files)"})
def directions_extract(
        config,
        model: str = common.Model,
        harmful: Path = typer.Option(..., help="prompts of the class to steer away from (e.g. harmful)"),
        harmless: Path = typer.Option(..., help="prompts of the other class (e.g. harmless)"),
        out: Path = common.Out,
        harmful_val: Optional[Path] = typer.Option(None, help="validation prompts (default: see --val-source)"),
        harmless_val: Optional[Path] = typer.Option(None, help="validation prompts (default: see --val-source)"),
        max_prompts: Optional[int] = typer.Option(128, help="use at most this many prompts of each training file"),
        batch_size: Optional[int] = common.BatchSize, system: str = common.System, seed: Optional[int] = common.Seed,
        device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
        overwrite: bool = common.Overwrite) -> None:
    """Extract the refusal direction (Arditi et al. 2024): DIR gets the direction, candidate table and figures."""
    from analyses import refusal
    from interp.data.prompts import read_prompts

    common.check_out(out, overwrite)
    common.system_value(system)  # a bad value fails before the model loads

    def first(path: Path) -> list[str]:
        p = read_prompts(path)
        return p[:max_prompts] if max_prompts else p

    data = refusal.RefusalData(first(harmful), first(harmless),
                               harmful_val=read_prompts(harmful_val) if harmful_val else None,
                               harmless_val=read_prompts(harmless_val) if harmless_val else None)
    config = dataclasses.replace(config, shortlist=config.shortlist or None)
    m = common.load(model, device, dtype)
    result = refusal.run(m, data, config)
    result.save(out)
    common.write_log(out)
    c = result.chosen
    for line in result.messages():
        typer.echo(line)
    for line in refusal.explain_relaxations(result, m.name, len(data.harmful), "interp directions extract",
                                            "--max-prompts"):
        typer.echo(line)
    typer.echo(f"chosen: layer {c['layer']}, position {c['position']} ({c['token']!r}); ablation refusal score "
               f"{c['ablation_score']:.2f} (baseline {result.baseline['harmful_refusal_score']:.2f}), addition "
               f"{c['addition_score']:.2f}, KL {c['kl']:.3f}; system={system!r}; {result.timings['total']:.0f} s")
    best = min(result.per_layer, key=lambda r: r["ablation_score"], default=None)
    if best is not None:
        typer.echo(f"best single layer (last position): layer {best['layer']}, ablation refusal score "
                   f"{best['ablation_score']:.2f}" + (f", KL {best['kl']:.3f}" if best["kl"] is not None else "")
                   + " (table: per_layer in result.json)")
    typer.echo(f"wrote {out}/subspace.safetensors, subspace.json, candidates.json, report.html, log.txt")


@app.command("export-gguf")
def directions_export_gguf(direction: Path = typer.Option(..., help="a folder written by `interp directions extract`"),
                           out: Path = typer.Option(..., help="output .gguf control vector (a file)"),
                           scale: float = typer.Option(1.0, help="multiply the vectors (llama.cpp scales them again)")) -> None:
    """Export the per-layer mean differences at the chosen position as a llama.cpp control vector (repeng layout).

    The vector read at `hook_resid_pre` of block l is what llama.cpp adds to the output of block l-1
    (`direction.{l-1}`); block 0's output has no slot in llama.cpp, so layer 1's vector is left out.
    """
    from interp.io import read_json, read_tensors
    from interp.steering.control_vector import export_control_vector

    meta = read_json(direction / "subspace.json")
    cands = read_tensors(direction / "candidates.safetensors")["mean_diffs"]
    table = read_json(direction / "candidates.json")
    layers = sorted({row["layer"] for row in table})
    pos = meta["provenance"]["position"] + cands.shape[0]
    vectors = {layer - 1: scale * cands[pos, i] for i, layer in enumerate(layers) if layer >= 2}
    export_control_vector(vectors, out, model_hint=meta["provenance"]["model"].get("model_type", "unknown"))
    typer.echo(f"wrote {len(vectors)} layer vectors to {out} (llama.cpp: --control-vector {out})")


@app.command("search")
@common.config_options("analyses.abliteration", "AbliterationConfig", rename={"n_trials": "trials"},
                       help={"n_trials": "Optuna trials (heretic runs 200)"})
def directions_search(
        config,
        model: str = common.Model,
        harmful: Path = typer.Option(..., help="prompts for the per-layer directions (class to stop refusing)"),
        harmless: Path = typer.Option(..., help="prompts of the other class"),
        out: Path = common.ResumableOut,
        harmful_val: Optional[Path] = typer.Option(None, help="validation prompts: the trials and the choice "
                                                            "(default: 32 of the bundled harmful_val)"),
        harmless_val: Optional[Path] = typer.Option(None, help="validation prompts: the trials' and the choice's KL "
                                                             "(default: 32 of the bundled harmless_val)"),
        harmful_test: Optional[Path] = typer.Option(None, help="held-out prompts on which only the chosen point (and "
                                                              "the unedited model) is judged, after the choice"),
        harmless_test: Optional[Path] = typer.Option(None, help="held-out prompts for the chosen point's test KL"),
        refusal_tokens: Optional[Path] = typer.Option(None, help="refusal tokens (refusal_tokens.json of "
                                                                 "`directions extract`); default: estimated"),
        max_prompts: Optional[int] = typer.Option(128, help="use at most this many prompts of each direction file"),
        batch_size: Optional[int] = common.BatchSize, system: str = common.System, seed: Optional[int] = common.Seed,
        device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
        overwrite: bool = common.Overwrite) -> None:
    """heretic's abliteration search: Optuna TPE over the direction (fractional layer) and per-layer weights,
    minimising refusals and KL; DIR gets pareto.json, report.html, directions + weights, checkpoint/ and log.txt.
    Resumable: the study lives in SQLite in DIR while it runs, and a rerun with the same --out continues it."""
    from analyses import abliteration
    from interp.data.prompts import dataset, read_prompts
    from interp.errors import InterpError
    from interp.judges import RefusalScore

    if config.n_trials < 1:
        raise InterpError(f"--trials must be at least 1, got {config.n_trials}")
    if config.trial_refusals not in ("first_token", "generate"):
        raise InterpError(f"--trial-refusals must be first_token or generate, got {config.trial_refusals!r}")
    common.check_out(out, overwrite, resumable=True)  # nothing is written into a used folder without --overwrite
    common.system_value(system)

    def first(path: Path) -> list[str]:
        p = read_prompts(path)
        return p[:max_prompts] if max_prompts else p

    sets: dict[str, Any]  # keyword arguments of AbliterationData
    sets = dict(harmful=first(harmful), harmless=first(harmless),
                harmful_val=read_prompts(harmful_val) if harmful_val else dataset("harmful_val", n=32),
                harmless_val=read_prompts(harmless_val) if harmless_val else dataset("harmless_val", n=32),
                harmful_test=read_prompts(harmful_test) if harmful_test else None,
                harmless_test=read_prompts(harmless_test) if harmless_test else None)
    if (harmful_test is None) != (harmless_test is None):
        raise InterpError("give both --harmful-test and --harmless-test, or neither")
    m = common.load(model, device, dtype)
    refusal = RefusalScore.load(refusal_tokens, m) if refusal_tokens else None
    result = abliteration.run(m, abliteration.AbliterationData(**sets, refusal=refusal), config,
                              checkpoint=common.checkpoint(out, overwrite))
    result.save(out)
    abliteration.export_checkpoint(m, result, out / "checkpoint")
    common.write_log(out)
    common.finish(out)
    c, v, base = result.chosen, result.chosen["validation"], result.baseline
    typer.echo(f"{len(result.trials)} trials, {len(result.pareto)} on the Pareto front; chosen trial {c['trial']} on "
               f"the validation prompts ({c['rule']}): refusal rate {v['refusal_rate']:.2f} (no edit "
               f"{base['validation']['refusal_rate']:.2f}), KL {v['kl']:.3f}; {result.timings['total']:.0f} s")
    if c["test"] is not None:
        typer.echo(f"test prompts (judged after the choice): refusal rate {c['test']['refusal_rate']:.2f} (no edit "
                   f"{base['test']['refusal_rate']:.2f}), KL {c['test']['kl']:.3f}")
    else:
        typer.echo("no test prompts (--harmful-test, --harmless-test): the chosen point's rates are on the validation "
                   "prompts it was chosen on")
    typer.echo(f"wrote {out}/pareto.json, report.html, directions.safetensors, chosen.json, checkpoint/, log.txt")
