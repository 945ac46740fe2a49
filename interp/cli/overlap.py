"""`interp overlap activations | weights`: are safety subspaces distinct from useful ones? (Ponkshe et al.)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import typer

from interp.cli import common

app = typer.Typer(help="Safety vs useful subspaces (Ponkshe et al.): activation and weight overlaps.",
                  no_args_is_help=True)


@app.command("activations")
@common.config_options("analyses.overlap", "OverlapConfig",
                       help={"chat": "chat template (--no-chat: raw text, as the paper; default: the chat template "
                                     "when the tokenizer has one)"})
def overlap_activations(config, model: str = common.Model,
                        a: Path = typer.Option(..., help="first prompt file (e.g. harmful requests)"),
                        b: Path = typer.Option(..., help="second prompt file (e.g. useful instructions)"),
                        out: Path = common.Out,
                        max_prompts: Optional[int] = typer.Option(None, help="use the first N prompts of each file"),
                        batch_size: Optional[int] = common.BatchSize, seed: Optional[int] = common.Seed,
                        device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
                        overwrite: bool = common.Overwrite) -> None:
    """Energy subspaces of last-token activations of two prompt sets at every layer: overlap and principal angles
    beside random baselines (max(k1, k2) / d and sampled)."""
    from analyses import overlap
    from interp.data.prompts import read_prompts

    common.check_out(out, overwrite)
    sets: dict[str, Sequence[str]] = {}
    for name, path in ((a.stem, a), (b.stem if b.stem != a.stem else f"{b.stem}-b", b)):
        items = read_prompts(path)
        sets[name] = items[:max_prompts] if max_prompts else items
    config.check()
    first, second = sets  # the two names, distinct by construction
    overlap.check_sets(sets, [(first, second)])  # bad inputs fail before the model loads
    result = overlap.run(common.load(model, device, dtype), sets, config)
    result.save(out)
    common.write_log(out)
    for name, s in result.summary()["pairs"].items():
        typer.echo(f"{name}: mean overlap {s['mean_overlap']:.3f} (random {s['mean_expected']:.3f} closed form, "
                   f"{s['mean_sampled']:.3f} sampled); layers {result.window_layers()[0]}-{result.window_layers()[-1]}: "
                   f"{s['window_overlap']:.3f} (random {s['window_expected']:.3f}); above random in "
                   f"{s['layers_above_random']}/{len(result.layers)} layers")
    typer.echo(f"wrote {out}/result.json, report.html, subspaces.safetensors, log.txt")


@app.command("weights")
def overlap_weights(base: str = typer.Option(..., help="base checkpoint: HF folder or bundled name"),
                    aligned: str = typer.Option(..., help="the aligned checkpoint made from the base"),
                    finetuned: str = typer.Option(..., help="the checkpoint fine-tuned from the aligned one"),
                    out: Path = typer.Option(..., "--out", help="output folder: checkpoints/<method>-<k>/, result.json, "
                                             "report.html, log.txt (new or empty unless --overwrite)"),
                    k: list[int] = typer.Option([], help="directions of V kept per matrix (repeat for several)"),
                    fraction: list[float] = typer.Option([], help="k as a fraction of min(m, n), the paper's frac "
                                                         "(repeat; default 0.1 and 0.5 when no --k is given)"),
                    method: list[str] = typer.Option(["same", "opposite", "orthogonal"], help="same | opposite | orthogonal"),
                    evaluate: bool = typer.Option(True, help="measure refusal, the judge's harmless rate and useful loss"),
                    harmful: Optional[Path] = typer.Option(None, help="harmful prompts (default: N of bundled harmful_val)"),
                    harmless: Optional[Path] = typer.Option(None, help="harmless prompts (default: N of bundled harmless_val)"),
                    useful: Optional[Path] = typer.Option(None, help="JSONL of {prompt, answer} for the useful-text loss "
                                                          "(default: --answer-model's cached answers to the harmless prompts)"),
                    answer_model: str = typer.Option(common.DEFAULT_MODEL, help="writes the default useful answers"),
                    n: int = typer.Option(32, min=1, help="prompts of each set used (the first N of a file)"),
                    max_new_tokens: int = typer.Option(32, min=1, help="greedy tokens judged for refusal"),
                    seed: Optional[int] = common.Seed, overwrite: bool = common.Overwrite) -> None:
    """The fine-tune's update projected on the alignment update's top-k subspace in every matrix: energy against
    random, and the same / opposite / orthogonal checkpoints with their refusal rate and useful-text loss."""
    from analyses import overlap
    from analyses.miniature import useful_answers
    from interp.data.prompts import dataset, read_prompts
    from interp.steering.weight_updates import Rank

    def bundled(name: str) -> list[str]:  # n drawn with seed 0, as the miniature's evaluation does
        return dataset(name, n=min(n, len(dataset(name))))

    common.check_out(out, overwrite)
    ranks = [Rank(k=v) for v in k] + [Rank(fraction=v) for v in fraction] or [Rank(fraction=0.1), Rank(fraction=0.5)]
    bad: list[str] = []
    good: list[str] = []
    pairs: list[tuple[str, str]] | None = None
    if evaluate:  # the files are read before any checkpoint loads
        bad = read_prompts(harmful)[:n] if harmful else bundled("harmful_val")
        good = read_prompts(harmless)[:n] if harmless else bundled("harmless_val")
        pairs = overlap.read_useful(useful)[:n] if useful else None
    overlap.check_weights_inputs(base, aligned, finetuned, out, ranks, method, None)
    evaluation = None
    if evaluate:
        if pairs is None:
            pairs = list(zip(good, useful_answers(good, answer_model)))
        evaluation = overlap.Evaluation(bad, good, pairs, max_new_tokens=max_new_tokens)
    result = overlap.weights(base, aligned, finetuned, out, ranks, method, evaluation, seed=seed or 0)
    result.save(out)
    common.write_log(out)
    for label, p in result.projections.items():
        typer.echo(f"{label}: energy of U inside top-k(V) {p['energy']:.3f} (random k-subspace {p['random_energy']:.3f}, "
                   f"expected {p['expected_energy']:.3f}) over {p['matrices']} matrices")
    for row in result.table():
        measures = "" if row.get("refusal_rate") is None else (
            f"  refusal {row['refusal_rate']:.2f}  harmless refusal {row['harmless_refusal_rate']:.2f}  "
            f"useful loss {row['useful_loss']:.3f}")
        typer.echo(f"{row['name']:<18}{measures}")
    typer.echo(f"wrote {out}/checkpoints/, result.json, report.html, log.txt")
