"""`interp truthful fit | eval`: ITI on TruthfulQA (analyses.truthful). fit writes a folder; eval one JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli import common

app = typer.Typer(help="Truthful directions: ITI on TruthfulQA (Li et al. 2023).", no_args_is_help=True)


@app.command("fit")
@common.config_options("analyses.truthful", "TruthfulConfig", rename={"n_examples": "examples"},
                       help={"heads": "K, heads steered (default: chosen per fold on the grid)",
                             "alpha": "strength in units of sigma (default: chosen on the grid)",
                             "grid_heads": "K values tried when --heads is not given (repeat)",
                             "grid_alphas": "alphas tried when --alpha is not given (repeat)",
                             "positions": "answer (the reference's): shift the answer's tokens when scoring multiple "
                                          "choice and the last token of each forward when generating; all: every "
                                          "position"})
def truthful_fit(config, model: str = common.Model, out: Path = common.ResumableOut,
                 max_questions: Optional[int] = typer.Option(None, help="the first N questions of the file"),
                 questions: Optional[Path] = typer.Option(None, help="a CSV in TruthfulQA's columns (default: the bundled one)"),
                 seed: Optional[int] = common.Seed, device: Optional[str] = common.Device,
                 dtype: Optional[str] = common.Dtype, overwrite: bool = common.Overwrite) -> None:
    """Fit ITI: probes for every head, top-K heads, mass-mean directions; MC1/MC2 baseline vs ITI on held-out folds.
    Resumable: a rerun with the same --out continues an interrupted run."""
    from analyses import truthful
    from interp.data.truthfulqa import read_questions

    common.check_out(out, overwrite, resumable=True)
    qs = read_questions(questions, max_questions)  # bad inputs fail before the model loads
    m = common.load(model, device, dtype)
    config.check(m, len(qs))
    result = truthful.run(m, qs, config, checkpoint=common.checkpoint(out, overwrite))
    s = result.summary()
    for metric in ("mc1", "mc2"):
        typer.echo(f"{metric.upper()} baseline {s[metric]['baseline']:.4f}  ITI {s[metric]['iti']:.4f}  (held-out folds)")
    typer.echo(f"KL {s['kl']:.4f}  CE baseline {s['ce']['baseline']:.4f}  ITI {s['ce']['iti']:.4f}")
    for f in s["folds"]:
        typer.echo(f"fold {f['fold']}: K={f['heads']} alpha={f['alpha']:g} ({f['selected_by']})")
    result.save(out)
    common.write_log(out)
    common.finish(out)
    typer.echo(f"wrote the intervention (K={s['final']['heads']}, alpha={s['final']['alpha']:g}, positions "
               f"{config.positions}, fitted on {s['final']['fitted_on']}, which it records: `interp truthful eval` "
               f"leaves them out) and the report to {out}")


@app.command("eval")
def truthful_eval(model: str = common.Model,
                  intervention: Path = typer.Option(..., help="a folder written by `interp truthful fit`"),
                  questions: Optional[Path] = typer.Option(None, help="a CSV in TruthfulQA's columns (default: the "
                                                           "bundled one)"),
                  max_questions: Optional[int] = typer.Option(None, help="the first N questions scored (after those "
                                                              "the intervention was fitted on are left out)"),
                  include_fitted: bool = typer.Option(False, "--include-fitted", help="also score the questions the "
                                                      "intervention was fitted on (its scores there overstate ITI)"),
                  form: str = typer.Option("qa", help="qa | chat"),
                  n_cost: int = typer.Option(16, help="harmless prompts for the KL"),
                  out: Path = typer.Option(..., help="output JSON file"),
                  device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype) -> None:
    """MC1, MC2 (baseline vs ITI) and the KL cost of a saved intervention on TruthfulQA-format questions it was not
    fitted on (it records them); the intervention acts at the positions it was fitted for."""
    from analyses import truthful
    from interp.data.prompts import dataset
    from interp.data.truthfulqa import check_form, read_questions
    from interp.errors import InterpError
    from interp.io import write_json
    from interp.steering.head_steering import HeadSteering

    check_form(form)
    if max_questions is not None and max_questions < 1:
        raise InterpError(f"--max-questions must be a positive integer, got {max_questions}")
    every = read_questions(questions)
    fitted = truthful.fitted_questions(HeadSteering.load(intervention))
    source = questions or "the bundled TruthfulQA"
    if include_fitted:
        qs = every
    elif fitted is None:
        raise InterpError(f"{intervention} does not record the questions it was fitted on, so they cannot be left "
                          "out; refit it with `interp truthful fit`, or pass --include-fitted to score every question")
    else:
        qs = [q for q in every if q.question not in fitted]
        if not qs:
            raise InterpError(f"{intervention} was fitted on all {len(every)} questions of {source}; give others with "
                              "--questions (or fit on fewer with `interp truthful fit --max-questions N`), or pass "
                              "--include-fitted to score them anyway")
    skipped = len(every) - len(qs)
    qs = qs[:max_questions] if max_questions is not None else qs
    m = common.load(model, device, dtype)
    steer = HeadSteering.load(intervention, model=m)
    typer.echo(f"scoring {len(qs)} questions of {source}" + (f" ({skipped} left out: the intervention was fitted on "
                                                             "them)" if skipped else ""))
    base = truthful.mean_scores(truthful.mc_eval(m, qs, None, form, desc="MC baseline"))
    iti = truthful.mean_scores(truthful.mc_eval(m, qs, steer, form, desc="MC ITI"))
    prompts = dataset("harmless_val", n=n_cost)
    c = truthful.cost(m, steer, truthful.reference(m, prompts, 32))
    obj = {"mc1": {"baseline": base["mc1"], "iti": iti["mc1"]}, "mc2": {"baseline": base["mc2"], "iti": iti["mc2"]},
           "kl": c["kl"], "ce": {"baseline": c["ce_baseline"], "iti": c["ce_iti"]}, "n_questions": len(qs),
           "n_fitted_left_out": skipped, "include_fitted": include_fitted,
           "intervention": {"path": str(intervention), "heads": steer.k, "alpha": steer.alpha,
                            "positions": steer.positions}}
    write_json(out, obj)
    typer.echo(f"MC1 baseline {base['mc1']:.4f}  ITI {iti['mc1']:.4f}")
    typer.echo(f"MC2 baseline {base['mc2']:.4f}  ITI {iti['mc2']:.4f}")
    typer.echo(f"KL {c['kl']:.4f} on {len(prompts)} harmless prompts; wrote {out}")
