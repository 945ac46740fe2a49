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
                             "grid_alphas": "alphas tried when --alpha is not given (repeat)"})
def truthful_fit(config, model: str = common.Model, out: Path = common.Out,
                 max_questions: Optional[int] = typer.Option(None, help="the first N questions of the file"),
                 questions: Optional[Path] = typer.Option(None, help="a CSV in TruthfulQA's columns (default: the bundled one)"),
                 seed: Optional[int] = common.Seed, device: Optional[str] = common.Device,
                 dtype: Optional[str] = common.Dtype, overwrite: bool = common.Overwrite) -> None:
    """Fit ITI: probes for every head, top-K heads, mass-mean directions; MC1/MC2 baseline vs ITI on held-out folds."""
    from analyses import truthful
    from interp.data.truthfulqa import read_questions

    common.check_out(out, overwrite)
    qs = read_questions(questions, max_questions)  # bad inputs fail before the model loads
    m = common.load(model, device, dtype)
    config.check(m, len(qs))
    result = truthful.run(m, qs, config)
    s = result.summary()
    for metric in ("mc1", "mc2"):
        typer.echo(f"{metric.upper()} baseline {s[metric]['baseline']:.4f}  ITI {s[metric]['iti']:.4f}  (held-out folds)")
    typer.echo(f"KL {s['kl']:.4f}  CE baseline {s['ce']['baseline']:.4f}  ITI {s['ce']['iti']:.4f}")
    for f in s["folds"]:
        typer.echo(f"fold {f['fold']}: K={f['heads']} alpha={f['alpha']:g} ({f['selected_by']})")
    result.save(out)
    common.write_log(out)
    typer.echo(f"wrote the intervention (K={s['final']['heads']}, alpha={s['final']['alpha']:g}, fitted on "
               f"{s['final']['fitted_on']}) and the report to {out}")


@app.command("eval")
def truthful_eval(model: str = common.Model,
                  intervention: Path = typer.Option(..., help="a folder written by `interp truthful fit`"),
                  questions: Optional[Path] = typer.Option(None, help="a CSV in TruthfulQA's columns (default: the "
                                                           "bundled one; questions the intervention was fitted on score too well)"),
                  max_questions: Optional[int] = typer.Option(None, help="the first N questions of the file"),
                  form: str = typer.Option("qa", help="qa | chat"),
                  n_cost: int = typer.Option(16, help="harmless prompts for the KL"),
                  out: Path = typer.Option(..., help="output JSON file"),
                  device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype) -> None:
    """MC1, MC2 (baseline vs ITI) and the KL cost of a saved intervention on any TruthfulQA-format questions."""
    from analyses import truthful
    from interp.data.prompts import dataset
    from interp.data.truthfulqa import check_form, read_questions
    from interp.io import write_json
    from interp.steering.head_steering import HeadSteering

    check_form(form)
    qs = read_questions(questions, max_questions)
    HeadSteering.load(intervention)
    m = common.load(model, device, dtype)
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
