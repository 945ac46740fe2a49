"""Write the results page of the documentation (docs/results.md) from benchmarks/results/*.json.

Every figure on that page comes from a results file; none is typed by hand. Each file gets a section: what it
measures (words only), the command and the provenance it records (commit, date, machine, versions), tables of its
headline values chosen below by their place in the JSON, and every scalar value of the file, folded. A results file
with no entry in SECTIONS still gets a section (its provenance and every value), so a new benchmark shows up as soon
as its JSON is committed.

    python -m benchmarks.results_page           # write docs/results.md
    python -m benchmarks.results_page --check   # exit 1 when docs/results.md is not what the JSON files give

tests/test_docs.py fails when the committed page is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks import papers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "results.md"
PROVENANCE = ("git_commit", "git_dirty", "git_source", "command", "machine", "versions", "date")
MISSING = "–"
PAPERS_ABOUT = ("Each paper's headline experiment, rerun in its faithful form on a bundled model, beside the figure "
                "the paper published (`benchmarks/papers.py`: the paper's figure is quoted with where it appears; "
                "ours is read from the results file linked in its cell; the verdict follows a rule fixed in that "
                "module, with thresholds taken from the papers, and says why where the effect is not reproduced).")


# ----- formatting -----

def fmt(value: Any) -> str:
    """One cell: floats to 4 significant digits, booleans as yes/no, short lists joined, None as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 12 or any(isinstance(v, (dict, list)) for v in value):
            return f"[{len(value)} values]"
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {fmt(v)}" for k, v in value.items())
    text = str(value).replace("|", "\\|").replace("[", "\\[").replace("]", "\\]").replace("\n", " ")
    return text if len(text) <= 160 else text[:159] + "…"


def get(data: Any, path: str) -> Any:
    """The value at a '/'-separated path (list items by index); None when any step is missing."""
    for key in path.split("/") if path else []:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and key.lstrip("-").isdigit() and -len(data) <= int(key) < len(data):
            data = data[int(key)]
        else:
            return None
    return data


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def command(text: str) -> str:
    """The recorded command with the interpreter's own path shortened to `python`."""
    return re.sub(r"^\S*python[0-9.]*\s", "python ", text.strip())


# ----- what each section shows -----

@dataclass
class Values:
    """A two-column table of (label, path) pairs."""

    title: str
    rows: Sequence[tuple[str, str]]

    def render(self, data: dict) -> list[str]:
        return [f"**{self.title}**", ""] + table(["", "value"], [[label, fmt(get(data, path))] for label, path in self.rows])


@dataclass
class Table:
    """A dict of dicts or a list of dicts at `path` as a table: one row per entry, one column per `columns` key
    (default: the keys of the first entry); `inner` descends into each entry first; `transpose` swaps the roles."""

    title: str
    path: str
    columns: Sequence[str] | None = None
    inner: str = ""
    row_label: str = ""
    transpose: bool = False
    rows: Sequence[str] | None = None

    def render(self, data: dict) -> list[str]:
        found = get(data, self.path)
        if isinstance(found, list):
            found = {str(i): entry for i, entry in enumerate(found)}
        if not isinstance(found, dict) or not found:
            return [f"**{self.title}**: not in this file", ""]
        entries = {k: get(v, self.inner) if self.inner else v for k, v in found.items()}
        entries = {k: v if isinstance(v, dict) else {"value": v} for k, v in entries.items()}
        if self.transpose:
            keys = list(dict.fromkeys(c for v in entries.values() for c in v))
            entries = {c: {k: v.get(c) for k, v in entries.items()} for c in keys}
        row_keys = [k for k in self.rows if k in entries] if self.rows else list(entries)
        columns = list(self.columns) if self.columns else list(dict.fromkeys(c for v in entries.values() for c in v))
        rows = [[k] + [fmt(get(entries.get(k, {}), c)) for c in columns] for k in row_keys]
        return [f"**{self.title}**", ""] + table([self.row_label] + list(columns), rows)


@dataclass
class Section:
    title: str
    about: str  # what the file measures, in words: never a figure
    parts: Sequence[Values | Table] = ()


SECTIONS: dict[str, Section] = {
    "judges": Section(
        "Judges against hand-labelled answers", "Each judge's verdicts on the hand-labelled answers of both bundled "
        "models (tests/data/labelled_answers.json: baseline, ablated, added and attacked outputs, labelled by reading "
        "them): agreement, false-positive and false-negative rates, beside the agreement of the constant verdict. "
        "Every refusal or success rate on this page is read with these error rates beside it.",
        [Values("the labelled set", [("answers", "labelled/n"), ("labels", "labelled/label"),
                                     ("harmful answers", "labelled/harmful")]),
         Table("each judge, all answers", "judges", ["claims", "overall/n", "overall/agreement",
                                                     "overall/constant_agreement", "overall/fp_rate",
                                                     "overall/fn_rate"], row_label="judge"),
         Table("each judge, by model", "judges", ["by_model/qwen2.5-coder-0.5b-instruct/agreement",
                                                  "by_model/qwen2.5-coder-0.5b-instruct/fp_rate",
                                                  "by_model/qwen2.5-coder-0.5b-instruct/fn_rate",
                                                  "by_model/smollm2-135m-instruct/agreement",
                                                  "by_model/smollm2-135m-instruct/fp_rate",
                                                  "by_model/smollm2-135m-instruct/fn_rate"], row_label="judge"),
         Table("each judge, by condition (agreement)", "judges", ["by_condition/baseline/agreement",
                                                                  "by_condition/ablated/agreement",
                                                                  "by_condition/added/agreement",
                                                                  "by_condition/attacked/agreement"],
               row_label="judge")]),
    "capture_smollm2": Section(
        "Capture overhead", "Seconds to capture `hook_resid_post` at every layer, against a bare forward measured in "
        "the same run, for each capture backend and for TransformerLens' own `run_with_cache` (median of the runs).",
        [Values("settings", [("model", "settings/model"), ("prompts x tokens", "settings/batch"),
                             ("tokens", "settings/tokens"), ("runs", "settings/runs"), ("sites", "settings/sites")]),
         Values("seconds (median) and ratio to a bare forward", [
             ("bare HF forward (with unembedding)", "bare_s"), ("decoder body only", "body_s"),
             ("body / bare", "body_ratio"), ("hooks backend, last token", "hooks_s"), ("hooks / bare", "hooks_ratio"),
             ("hooks / body", "hooks_body_ratio"), ("hooks backend, all tokens", "hooks_all_tokens_s"),
             ("hooks all tokens / bare", "hooks_all_tokens_ratio"), ("TransformerLens backend", "tl_backend_s"),
             ("TransformerLens backend / bare", "tl_backend_ratio"), ("nnsight backend", "nnsight_s"),
             ("nnsight / bare", "nnsight_ratio"), ("TransformerLens run_with_cache", "tl_s"),
             ("run_with_cache / bare", "tl_ratio")])]),
    "refusal_qwen05": Section(
        "Refusal direction (Arditi et al.)", "The refusal direction found by `analyses.refusal`, the filter counts and "
        "every relaxation, the shortlist against the exhaustive search, and refusal rates of greedy answers on "
        "held-out prompts at baseline, with the direction ablated by hooks, from the orthogonalised checkpoint, "
        "and on harmless prompts with the direction added.",
        [Values("chosen direction", [
            ("layer", "extraction/chosen/layer"), ("position", "extraction/chosen/position"),
            ("token", "extraction/chosen/token"), ("validation refusal score, ablated", "extraction/chosen/ablation_score"),
            ("baseline harmful refusal score", "extraction/baseline/harmful_refusal_score"),
            ("validation KL", "extraction/chosen/kl"), ("addition strength", "extraction/chosen/addition_alpha"),
            ("selection relaxed", "extraction/chosen/relaxed"), ("system prompt", "extraction/system")]),
         Table("filter counts", "extraction/filter_counts", ["given", "passed", "kept", "rule", "relaxed"], row_label="set"),
         Table("relaxations, in the method's words", "extraction/relaxations", row_label="#"),
         Values("shortlist vs exhaustive search", [
             ("same choice", "shortlist_vs_exhaustive/same_choice"),
             ("top-5 overlap", "shortlist_vs_exhaustive/top5_overlap"),
             ("candidates scored by the shortlist run", "shortlist_vs_exhaustive/n_scored_shortlist"),
             ("candidates", "shortlist_vs_exhaustive/n_candidates"),
             ("shortlist scoring, s", "shortlist_vs_exhaustive/shortlist_scoring_s"),
             ("exhaustive scoring, s", "shortlist_vs_exhaustive/exhaustive_scoring_s")]),
         Table("refusal rate on held-out prompts (substring judge)", "evaluation/refusal_rate", row_label="condition"),
         Values("capability cost and judge", [
             ("judge false-positive rate (harmless baseline answers called refusals)", "evaluation/judge_fp_rate"),
             ("first-token KL, hook ablation", "evaluation/capability/hook/kl"),
             ("CE, hook ablation", "evaluation/capability/hook/ce"),
             ("CE, orthogonalised checkpoint", "evaluation/capability/orthogonalized/ce"),
             ("CE, plain model", "evaluation/capability/hook/ce_clean"),
             ("hook vs checkpoint, same refusal decision", "evaluation/hook_vs_checkpoint/decision_agreement"),
             ("harmless refused with the direction added at strength 1", "evaluation/harmless_refused_with_addition_alpha1"),
             ("steered / plain generation time", "generation_overhead/steered_ratio")]),
         Table("each layer's difference in means, last position, ablated", "extraction/per_layer",
               ["layer", "ablation_score", "cut", "kl", "addition_score", "passes"], row_label="#")]),
    "extract_time": Section(
        "`interp directions extract` at its defaults", "The command a user runs, in a subprocess at the default "
        "thread settings: the bundled model, 128 + 128 training prompts, the template's own system prompt, the "
        "attribution shortlist and the lazy filter walk; then the same with every candidate scored (`--shortlist 0`). "
        "Wall time, the analysis's own steps, and whether the two choose the same direction (issue 20's target, "
        "in the target rows: the default run within a time limit, with the same choice).",
        [Table("runs", "runs", ["total_seconds", "n_candidates", "n_scored", "n_filter_scored", "chosen/layer",
                                "chosen/position", "chosen/relaxed", "load_avg_before"], row_label="run"),
         Table("steps, s", "runs", inner="timings_s", row_label="run"),
         Values("shortlist vs every candidate", [
             ("same choice", "shortlist_vs_exhaustive/same_choice"),
             ("top 5 by ablation score, shortlist", "shortlist_vs_exhaustive/top5_shortlist"),
             ("top 5 by ablation score, every candidate", "shortlist_vs_exhaustive/top5_exhaustive"),
             ("target: default run at most, s", "target/default_run_at_most_s"), ("target met", "target/met")])]),
    "demo_time": Section(
        "`make demo` after set-up", "`interp demo` in a subprocess at the default thread settings, as a new user runs "
        "it: wall time, the demo's steps, the refusal method's sub-steps, and what it showed (issue 20's target: "
        "a short first run that still shows the effect).",
        [Values("run", [("total, s", "total_seconds"), ("load before", "load_avg_before"),
                        ("chosen layer", "chosen/layer"), ("chosen position", "chosen/position")]),
         Values("demo steps, s", [(k, f"steps_s/{k}") for k in ("load", "refusal", "separation", "answers", "reports")]),
         Values("refusal method steps, s", [(k, f"refusal_method_steps_s/{k}") for k in
                                            ("judge", "filter", "capture", "attribution", "scoring", "alpha")])]),
    "abliteration_qwen05": Section(
        "Abliteration search (heretic)", "heretic's multi-objective search (refusals and KL) over weight kernels and "
        "direction choices, the chosen Pareto point judged on held-out test prompts, beside Arditi's direction "
        "ablated by hooks.",
        [Values("settings", [("trials", "settings/trials"), ("startup trials", "settings/n_startup_trials"),
                             ("KL budget", "settings/kl_budget"), ("trial refusals", "settings/trial_refusals"),
                             ("system prompt", "settings/system")]),
         Values("the unedited model", [("validation refusal rate", "baseline/validation/refusal_rate"),
                                       ("test refusal rate", "baseline/test/refusal_rate")]),
         Table("Pareto points judged on the validation prompts (the choice is made here)", "validation",
               ["trial", "refusal_rate", "kl", "ce"], row_label="#"),
         Table("chosen point vs reference, judged on the test prompts after the choice", "comparison",
               ["trial", "refusal_rate", "kl", "ce"], rows=["chosen", "reference"], row_label=""),
         Table("Pareto front of the trials (validation prompts, proxy refusals)", "pareto", ["trial", "refusals", "kl"],
               row_label="#"),
         Values("targets", [("fewer refusals at no more KL", "comparison/fewer_refusals_at_no_more_kl"),
                            ("same refusals at half the KL or less", "comparison/same_refusals_at_half_kl_or_less"),
                            ("target met", "comparison/target_met")]),
         Table("departures", "departures", row_label="name")]),
    "attack_qwen05": Section(
        "Rerouting attack (SSR) vs GCG", "Subspace rerouting and GCG (and nanoGCG's preset where run) at an equal "
        "budget of forwards per behaviour on harmful behaviours the model refuses. Success by the substantive judge, twice: "
        "single attempt (the final best-loss suffix judged once, N = 1 for every method) and best of N (any of the N "
        "judged attempts a preset's schedule makes; N beside it). Seconds and forwards per success are per best-of-N "
        "success. The judge's error rates are in the judges section.",
        [Values("budget", [("forwards per behaviour", "budget/forwards_per_behaviour"),
                           ("new tokens judged", "budget/max_new_tokens"), ("behaviours", "ssr/requested")]),
         Table("success, single attempt vs best of N", "", ["finished", "single_attempt/successes",
                                                           "single_attempt/rate", "single_attempt/exact",
                                                           "best_of_n/successes", "best_of_n/rate", "best_of_n/n/mean",
                                                           "best_of_n/n/max", "substring_successes"],
               rows=["ssr", "gcg", "nanogcg"], row_label="method"),
         Table("time", "", ["seconds_per_success", "forwards_per_success", "total_seconds"],
               rows=["ssr", "gcg", "nanogcg"], row_label="method"),
         Table("targets", "targets", row_label="against")]),
    "attack_nanogcg_qwen05": Section(
        "Rerouting attack (SSR) vs nanoGCG's defaults", "The same comparison with nanoGCG's preset as a third "
        "method, on fewer behaviours. Success here is best of N (any judged attempt, N differing between the presets); "
        "a file written before single-attempt success was reported has no other (see its commit).",
        [Table("per method", "", ["finished", "successes", "success_rate", "substring_successes", "seconds_per_success",
                                  "forwards_per_success", "total_seconds"], rows=["ssr", "gcg", "nanogcg"],
               row_label="method"),
         Table("targets", "targets", row_label="against")]),
    "tasks": Section(
        "Circuit tasks the bundled models solve", "Solve rate (share of clean prompts with a positive logit "
        "difference) of each task, and Laundry List accuracy (the answer beats every item of the list).",
        [Table("solve rate / accuracy", "models", inner="rates", transpose=True, row_label="task")]),
    "patching_qwen05": Section(
        "Activation and path patching, IOI", "Batched against one-location-per-forward residual sweeps, attribution "
        "patching against exact patching, the strongest heads at the last position, and path patching of the "
        "senders into them.",
        [Values("the task", [("model", "model"), ("items", "n_items"), ("clean logit difference", "clean_logit_diff"),
                             ("corrupted logit difference", "corrupted_logit_diff"), ("prompt tokens", "position_tokens")]),
         Values("the residual sweep", [("locations", "resid_sweep/locations"), ("batched, s", "resid_sweep/batched_s"),
                                       ("one location per forward, s", "resid_sweep/loop_s"),
                                       ("speed-up", "resid_sweep/speedup"),
                                       ("largest difference", "resid_sweep/max_abs_diff")]),
         Table("attribution vs exact patching, Pearson r", "attribution_correlation", row_label="grid"),
         Table("heads at the last position", "movers", row_label="#"),
         Table("senders", "senders", row_label="#"),
         Table("path patching into the movers", "path_patching", transpose=True, row_label="row")]),
    "heads_qwen05": Section(
        "Heads as matrices", "Composition scores of every head pair against random matrices of the same shapes, and "
        "edits of the strongest channels on IOI and Laundry List; the data-based inhibition score of each channel "
        "(the receiver's attention gap between the two names, clean minus with the channel removed, on items "
        "disjoint from those that chose the receivers) beside a control.",
        [Values("random baseline", [("mean", "analysis/baseline/mean"), ("std", "analysis/baseline/std"),
                                    ("99th percentile", "analysis/baseline/p99")]),
         Table("composition", "analysis/composition", ["mean", "max", "share_above_baseline_p99"], row_label="kind"),
         Table("edited channels", "edited_channels", ["mode", "sender", "receiver", "score", "components", "shares"],
               row_label="#"),
         Table("inhibition score (score part)", "edited_channels",
               ["sender", "receiver", "inhibition/channel/score", "inhibition/channel/score_std",
                "inhibition/control/score", "inhibition/channel/items"], row_label="#"),
         Values("item split", [("items choosing the receivers", "split/select_items"),
                               ("items scoring the edits", "split/score_items")]),
         Table("channel edits: logit difference", "table", row_label="task",
               columns=["none/logit_diff", "channel_removed/logit_diff", "channel_x2/logit_diff",
                        "control_removed/logit_diff"]),
         Table("channel edits: accuracy", "table", row_label="task",
               columns=["none/accuracy", "channel_removed/accuracy", "channel_x2/accuracy",
                        "control_removed/accuracy"])]),
    "das_qwen05": Section(
        "DAS and the illusion checks, IOI", "Logit-difference recovery on held-out items (clean 1, corrupted 0) of a "
        "DAS subspace beside the whole component, diff-in-means, a probe and a random subspace, with the verdict "
        "of the interpretability-illusion checks.",
        [Values("the task", [("items solved", "n_items"), ("solve rate", "solve_rate"), ("k", "k"),
                             ("epochs", "epochs")]),
         Table("recovery on the test items", "sites", inner="recovery", row_label="site"),
         Table("verdicts", "sites", inner="verdicts", row_label="site"),
         Table("DAS training", "sites", ["das_train_s", "das_epochs_run", "das_best_epoch"], row_label="site")]),
    "truthful_qwen05": Section(
        "ITI on TruthfulQA", "Inference-time intervention, cross-validated by question: MC1 and MC2 on the held-out "
        "folds with and without ITI, KL and cross-entropy costs, and the batched per-head probes against "
        "scikit-learn.",
        [Table("held-out folds", "", ["baseline", "iti", "gain"], rows=["mc1", "mc2", "mc3"], row_label="score"),
         Values("cost and target", [("KL", "kl"), ("CE baseline", "ce/baseline"), ("CE with ITI", "ce/iti"),
                                    ("target: MC2 gain at least", "target/mc2_gain_at_least"),
                                    ("target: KL at most", "target/kl_at_most"), ("target met", "target/met")]),
         Table("folds", "analysis/folds", ["fold", "n_test", "heads", "alpha", "selected_by"], row_label="#"),
         Values("batched probes vs scikit-learn", [
             ("heads", "probes/heads_compared"), ("largest accuracy difference", "probes/max_abs_accuracy_diff"),
             ("share within 1 point", "probes/share_within_1_point"), ("batched, s", "probes/batched_all_heads_s"),
             ("scikit-learn loop, s", "probes/sklearn_loop_all_heads_s"), ("speed-up", "probes/speedup")]),
         Table("departures", "analysis/departures", row_label="#")]),
    "probes_qwen05": Section(
        "Batched per-head probes vs scikit-learn", "ITI's probing step alone, on real TruthfulQA head activations: "
        "every (layer, head) logistic probe at once against scikit-learn fitted head by head, validation accuracy of "
        "both and the time ratio, one thread each, in one process (issue 20's target: 10x at equal accuracy).",
        [Values("settings", [("model", "model"), ("questions", "n_questions"), ("training pairs", "runs/0/n_train_pairs"),
                             ("validation pairs", "runs/0/n_val_pairs"), ("heads", "runs/0/all_heads")]),
         Values("accuracy", [("mean, batched", "runs/0/mean_val_accuracy/batched"),
                             ("mean, scikit-learn", "runs/0/mean_val_accuracy/sklearn"),
                             ("largest difference", "runs/0/max_abs_accuracy_diff"),
                             ("share within 1 point", "runs/0/share_within_1_point")]),
         Values("time", [("batched, s", "runs/0/batched_all_heads_s"),
                         ("scikit-learn loop, s", "runs/0/sklearn_loop_all_heads_s"),
                         ("Newton iterations", "runs/0/newton_iterations"), ("speed-ups", "speedups"),
                         ("median speed-up", "speedup_median"), ("target met", "target/met")])]),
    "concepts_qwen05": Section(
        "Concept steering (G-ACT)", "Target-language share and code share of greedy answers on the test tasks: the "
        "neutral prompt, the language named in the prompt, one mean vector, and G-ACT's router.",
        [Table("target share / code share", "table", row_label="target",
               columns=["baseline/target_share", "baseline/code_share", "prompt/target_share", "prompt/code_share",
                        "mean/target_share", "mean/code_share", "gact/target_share", "gact/code_share"]),
         Table("chosen layer and strength", "chosen", ["layers", "alpha"], row_label="target"),
         Table("targets", "target", row_label="target"),
         Table("probe accuracy at the injection layer (agreement with k-means)", "probe_accuracy",
               ["mean_unrefined", "at_injection"], row_label="target"),
         Values("time per generated token", [("plain, s", "time_per_token/plain_s_per_token"),
                                             ("router, s", "time_per_token/router_s_per_token"),
                                             ("ratio", "time_per_token/ratio")])]),
    "overlap_qwen05": Section(
        "Safety subspaces vs useful ones", "Activation space: the mean squared overlap of the energy subspaces of "
        "prompt sets over the reference's window of layers, at every energy share of the reference's sweep, "
        "uncentred (the reference's setting) and centred, beside max(k1, k2) / d, and at the former default share "
        "0.9. Update space: a useful and a harmful fine-tune of the same instruct model, their updates' energy bases "
        "compared per parameter. Parameter space: a miniature (SmolLM2 base, aligned and fine-tuned on a CPU) and "
        "the edited checkpoints.",
        [Table("activation space, uncentred: overlap over the window, per share", "activations/uncentred/sweep",
               ["shares", "window_overlap", "window_expected"], row_label="pair"),
         Table("activation space, centred: overlap over the window, per share", "activations/centred/sweep",
               ["shares", "window_overlap", "window_expected"], row_label="pair"),
         Table("activation space at the former default share 0.9, uncentred",
               "activations/former_default_0.9/uncentred/pairs",
               ["window_overlap", "window_expected", "mean_min_angle"], row_label="pair"),
         Table("update space: useful vs harmful fine-tune updates, per share", "updates/totals",
               ["all/overlap", "all/expected", "matrices/overlap", "matrices/expected"], row_label="share"),
         Table("parameter space: energy of the fine-tune update in the alignment subspace", "parameters/projections",
               ["energy", "random_energy", "expected_energy"], row_label="k"),
         Table("parameter space: checkpoints", "parameters/table",
               ["name", "refusal_rate", "harmless_refusal_rate", "useful_loss", "energy"], row_label="#")]),
    "gpu_qwen15_random": Section(
        "GPU timings", "On one GPU, a randomly initialised model of Qwen2.5-1.5B's shape in bf16: batched candidate "
        "scoring against one candidate per forward, the attack engine with N behaviours together against one at a "
        "time, capture and generation against plain forwards.",
        [Values("candidate scoring", [("batched, s", "scoring/batched_s"), ("one at a time, s", "scoring/one_at_a_time_s"),
                                      ("speed-up", "scoring/speedup"), ("largest difference (bf16)", "scoring/max_abs_diff")]),
         Table("attack engine, seconds per behaviour-step", "attack/by_n",
               ["together_s_per_behaviour_step", "one_at_a_time_s_per_behaviour_step", "ratio"], row_label="N"),
         Values("capture and generation", [("capture / bare forward", "capture/capture_ratio"),
                                           ("capture without prefix cache / bare", "capture/capture_no_prefix_cache_ratio"),
                                           ("steered / plain generation", "generation/steered_ratio"),
                                           ("peak GPU memory, GiB", "peak_gpu_memory_gib")])]),
    "test_time": Section(
        "`make test` from a fresh clone", "The time of each phase of `make test` from a fresh clone with a fresh "
        "model cache, one after the other.",
        [Table("phases", "phases", ["seconds", "returncode", "last_line"], row_label="phase"),
         Values("total", [("make test, s", "make_test_seconds"), ("passed", "make_test_passed"), ("cores", "cores")])]),
}


# ----- the page -----

def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every scalar of `data` with its path; lists of more than 12 scalars and long texts are summarised."""
    if isinstance(data, dict):
        return [item for k, v in data.items() for item in flatten(v, f"{prefix}{k}/")]
    if isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data) and len(data) <= 12:
        return [item for i, v in enumerate(data) for item in flatten(v, f"{prefix}{i}/")]
    return [(prefix.rstrip("/"), data)]


def provenance(data: dict) -> list[str]:
    machine, versions = data.get("machine") or {}, data.get("versions") or {}
    where = ", ".join(str(x) for x in (machine.get("device"), machine.get("cpu"),
                                       machine.get("cpu_count") and f"{machine['cpu_count']} cores",
                                       machine.get("torch_threads") and f"{machine['torch_threads']} torch threads")
                      if x)
    dirty = " (uncommitted changes)" if data.get("git_dirty") else ""
    lines = [f"```bash\n{command(data['command'])}\n```"] if data.get("command") else []
    lines.append(f"Commit `{str(data.get('git_commit', MISSING))[:10]}`{dirty}, {str(data.get('date', MISSING))[:10]}; "
                 f"{where or 'machine not recorded'}; torch {versions.get('torch', MISSING)}, transformers "
                 f"{versions.get('transformers', MISSING)}.")
    return lines + [""]


def section(name: str, data: dict) -> list[str]:
    spec = SECTIONS.get(name, Section(name, "A results file with no summary of its own yet: every value is below."))
    out = [f"## {spec.title}", "", f"`benchmarks/results/{name}.json`. {spec.about}", ""] + provenance(data)
    for part in spec.parts:
        out += part.render(data)
    values = [(k, v) for k, v in flatten({k: v for k, v in data.items() if k not in PROVENANCE})]
    out += ['<details markdown="1"><summary>every value in the file</summary>', ""]
    out += table(["path", "value"], [[f"`{k}`", fmt(v)] for k, v in values])
    return out + ["</details>", ""]


def render(results: Path = RESULTS) -> str:
    files = sorted(results.glob("*.json"))
    order = {name: i for i, name in enumerate(SECTIONS)}
    files.sort(key=lambda p: (order.get(p.stem, len(order)), p.stem))
    out = ["# Results", "",
           "<!-- Generated by `python -m benchmarks.results_page` from benchmarks/results/*.json; do not edit. -->", "",
           "Every figure of the project, read from the results files that the benchmarks write "
           "(`make bench` reruns them all). Each section names its file, the command that wrote it and the "
           "commit, date, machine and versions it recorded; the guides explain how to read them. Timings on "
           "shared machines are noisy: each benchmark compares against a baseline measured in the same run.", ""]
    out += [f"- [{SECTIONS[p.stem].title if p.stem in SECTIONS else p.stem}](#{anchor(p.stem)})" for p in files] + [""]
    out += ["## Each paper beside ours", "", PAPERS_ABOUT, "",
            papers.papers_markdown(papers.load_results(results), link=lambda stem: f"#{anchor(stem)}"), ""]
    for path in files:
        out += section(path.stem, json.loads(path.read_text(encoding="utf-8")))
    return "\n".join(out).rstrip() + "\n"


def anchor(name: str) -> str:
    """The heading id MkDocs gives a section's title."""
    title = SECTIONS[name].title if name in SECTIONS else name
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title.lower())).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale; write nothing")
    parser.add_argument("--out", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != page:
            print(f"{args.out} is stale: run python -m benchmarks.results_page", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
