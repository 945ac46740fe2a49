"""`interp concepts fit | steer`: which programming language a code model writes (G-ACT, Sharma and Raman 2025).
fit writes a folder; steer one JSONL file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from interp.cli import common

app = typer.Typer(help="Concept steering: the programming language a code model writes (G-ACT).", no_args_is_help=True)


@app.command("fit")
@common.config_options("analyses.concepts", "ConceptsConfig", skip=("targets", "methods"),
                       rename={"candidate_layers": "layer", "candidate_alphas": "alpha"},
                       help={"candidate_layers": "candidate injection layers (repeat; default a third and a half of "
                                                 "the depth); one --layer and one --alpha skip the selection",
                             "candidate_alphas": "candidate strengths (repeat)",
                             "n_train": "training tasks (default: all the rest)",
                             "refine": "refine the probe by gradient (--no-refine: ACT's probe)",
                             "neurons": "also run the paper's static neuron-attribution baseline on the same splits "
                                        "(--no-neurons: leave it out)",
                             "neuron_scales": "candidate factors on the baseline's neurons (repeat); one skips the "
                                              "selection"})
def concepts_fit(config, model: str = common.Model,
                 target: str = typer.Option(..., help="the language to steer toward: cpp, java, rust, julia, python, ..."),
                 method: str = typer.Option("gact", help="gact (probe-routed cluster centroids) | mean (one vector)"),
                 out: Path = common.ResumableOut,
                 tasks: Optional[Path] = typer.Option(None, help="language-neutral programming tasks, any prompt file "
                                                      "(default: the bundled code_tasks; split by their id column)"),
                 batch_size: Optional[int] = common.BatchSize, seed: Optional[int] = common.Seed,
                 device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
                 overwrite: bool = common.Overwrite) -> None:
    """Fit a router (gact) or one mean-difference vector (mean) steering the model toward TARGET, and compare it on
    held-out tasks with the unsteered model, with naming the language in the prompt and with the paper's static
    neuron-attribution baseline (top MLP neurons scaled). Resumable: a rerun with the same --out continues an
    interrupted run."""
    from analyses import concepts
    from interp.data.prompts import dataset_path, read_behaviors

    common.check_out(out, overwrite, resumable=True)
    items = read_behaviors(tasks if tasks is not None else dataset_path("code_tasks"))
    config = dataclasses.replace(config, targets=(target,), methods=(method,))
    config.check(len(items))  # bad inputs fail before the model loads
    m = common.load(model, device, dtype)
    result = concepts.run(m, items, config, checkpoint=common.checkpoint(out, overwrite))
    lang = config.targets[0]
    router = result.router(lang, method)
    router.save(out)
    result.save(out)
    common.write_log(out)
    common.finish(out)
    fit = result.fits[lang]
    typer.echo(f"{lang}: layer {fit.layers[0]}, alpha {fit.alpha:g} ({fit.selection['selected_by']})")
    for name, row in result.table[lang].items():
        typer.echo(f"{name:<9} target share {row['target_share']:.2f}  code share {row['code_share']:.2f}  "
                   f"({row['n']} test tasks)")
    if fit.neurons is not None:
        typer.echo("neurons: " + ", ".join(f"L{layer} N{j}" for layer, j in fit.neurons.neurons)
                   + f" (mlp.hook_post) x{fit.neurons.scale:g} ({fit.neurons.selection['selected_by']})")
    typer.echo(f"wrote the {method} router (k={router.k}), the report and log.txt to {out}")


@app.command("steer")
def concepts_steer(model: str = common.Model,
                   steering: Path = typer.Option(..., help="a folder written by `interp concepts fit`"),
                   prompts: Path = typer.Option(..., help="prompt file"),
                   out: Path = typer.Option(..., help="output JSONL file: prompt, response, language"),
                   max_new_tokens: int = typer.Option(96), batch_size: Optional[int] = common.BatchSize,
                   device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype) -> None:
    """Greedy answers steered by a saved router (or mean vector), each with the language it is written in."""
    import json

    from interp.data.prompts import read_prompts
    from interp.io import write_text
    from interp.judges.languages import detect
    from interp.steering.concept_router import ConceptRouter

    items = read_prompts(prompts)
    ConceptRouter.load(steering)  # broken files fail before the model loads
    m = common.load(model, device, dtype)
    router = ConceptRouter.load(steering, model=m)
    responses = router.generate(m, items, max_new_tokens=max_new_tokens, batch_size=batch_size or 16, progress=True)
    rows = [{"prompt": p, "response": r, "language": detect(r).language} for p, r in zip(items, responses)]
    write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
    target = router.provenance.get("target")
    share = sum(row["language"] == target for row in rows) / len(rows)
    typer.echo(f"wrote {len(rows)} responses to {out}; {share:.0%} in {target}")
