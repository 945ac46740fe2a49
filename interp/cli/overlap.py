"""`interp overlap activations | updates | weights`: are safety subspaces distinct from useful ones? (Ponkshe et al.)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import typer

from interp.cli import common
from interp.errors import InterpError

app = typer.Typer(help="Safety vs useful subspaces (Ponkshe et al.): activation, update and weight overlaps.",
                  no_args_is_help=True)


@app.command("activations")
@common.config_options("analyses.overlap", "OverlapConfig",
                       help={"chat": "chat template (--no-chat: raw text, as the paper; default: the chat template "
                                     "when the tokenizer has one)",
                             "shares": "energy share the subspaces hold (repeat; default: the reference's sweep "
                                       "0.01 0.1 ... 0.6)"})
def overlap_activations(config, model: str = common.Model,
                        a: Path = typer.Option(..., help="first prompt file (e.g. harmful requests)"),
                        b: Path = typer.Option(..., help="second prompt file (e.g. useful instructions)"),
                        out: Path = common.Out,
                        max_prompts: Optional[int] = typer.Option(None, help="use the first N prompts of each file"),
                        batch_size: Optional[int] = common.BatchSize, seed: Optional[int] = common.Seed,
                        device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
                        overwrite: bool = common.Overwrite) -> None:
    """Energy subspaces of last-token activations of two prompt sets at every layer and energy share: overlap and
    principal angles beside random baselines (max(k1, k2) / d and sampled)."""
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
    summary = result.summary()
    lo, hi = summary["window_layers"]
    for name, sw in summary["sweep"].items():
        typer.echo(f"{name}, layers {lo}-{hi}, mean overlap (random max(k1,k2)/d) per energy share:")
        for share, got, expected in zip(sw["shares"], sw["window_overlap"], sw["window_expected"]):
            k1 = summary["by_share"][f"{share:g}"]["layers_with_k1"]
            typer.echo(f"  {share:<5g} {got:.3f} ({expected:.3f}); layers with k = 1: "
                       + ", ".join(f"{s} {n}/{len(result.layers)}" for s, n in k1.items()))
    typer.echo(f"wrote {out}/result.json, report.html, subspaces.safetensors, log.txt")


@app.command("updates")
def overlap_updates(instruct: str = typer.Option(..., help="the instruct (aligned) checkpoint both fine-tunes start from"),
                    useful: str = typer.Option(..., help="the checkpoint fine-tuned from it on useful data"),
                    harmful: str = typer.Option(..., help="the checkpoint fine-tuned from it on harmful data"),
                    out: Path = common.Out,
                    share: list[float] = typer.Option([], help="energy share of each update's basis (repeat; default: "
                                                      "the reference's sweep 0.01 0.1 ... 0.9 0.99)"),
                    svd: str = typer.Option("reference", help="reference (exact SVD up to 10000 rows or columns, the "
                                            "reference's randomized fallback above) | exact"),
                    delta_dtype: str = typer.Option("float32", help="float32 | float16 (the reference subtracts "
                                                    "float16 weights)"),
                    seed: Optional[int] = common.Seed, overwrite: bool = common.Overwrite) -> None:
    """The reference's update-space comparison: per parameter, the energy bases of the useful and the harmful
    fine-tune's updates (W_ft - W_instruct), their mean squared overlap and the max(k_U, k_H) / m baseline."""
    from analyses import overlap
    from interp.steering import weight_updates as W

    common.check_out(out, overwrite)
    shares = W.check_shares(tuple(share) if share else W.UPDATE_SHARES)
    W.check_svd(svd, W.UPDATE_SVD)
    if delta_dtype not in W.DELTA_DTYPES:
        raise InterpError(f"--delta-dtype must be one of {', '.join(W.DELTA_DTYPES)}, got {delta_dtype!r}")
    result = overlap.updates(instruct, useful, harmful, shares, svd, delta_dtype, seed=seed or 0)
    result.save(out)
    common.write_log(out)
    for key, t in result.summary()["totals"].items():
        a, m = t["all"], t["matrices"]
        typer.echo(f"share {key:<5} overlap {a['overlap']:.3f} (random {a['expected']:.3f}) over {a['tensors']} tensors; "
                   f"matrices {m['overlap']:.3f} (random {m['expected']:.3f})")
    typer.echo(f"wrote {out}/result.json, report.html, log.txt")


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
                    svd: str = typer.Option("exact", help="exact (what the reference runs) | randomized"),
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
    from interp.steering.weight_updates import check_svd

    check_svd(svd)
    overlap.check_weights_inputs(base, aligned, finetuned, out, ranks, method, None)
    evaluation = None
    if evaluate:
        if pairs is None:
            pairs = list(zip(good, useful_answers(good, answer_model)))
        evaluation = overlap.Evaluation(bad, good, pairs, max_new_tokens=max_new_tokens)
    result = overlap.weights(base, aligned, finetuned, out, ranks, method, evaluation, seed=seed or 0, svd=svd)
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
