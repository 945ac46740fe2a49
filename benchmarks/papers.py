"""Each paper's headline experiment beside ours: the table a researcher reads first.

For each paper the toolkit implements, the published figure (quoted, with the model and where in the paper or its
reference code it appears) is set beside the figure our committed benchmark measured on a bundled model, read from
benchmarks/results/*.json at render time, and a verdict computed from our figures by a rule fixed here (the rules
were written before the reruns of the ITI, attack, Talking Heads and safety-subspace benchmarks they judge, but
with the earlier figures of every benchmark known; the thresholds come from the papers' figures, not ours):

- "reproduced": the effect the paper reports, at a size comparable to the paper's;
- "reproduced in direction only": the effect has the paper's sign (and shape), smaller than the paper's;
- "not reproduced on this model": it does not, with the likely reason.

The paper columns are citations (typed from the papers); every "ours" figure and verdict comes from a results file.
`papers_markdown()` is pasted into the README between its markers and opens docs/results.md; tests/test_docs.py
checks both are current.

    python -m benchmarks.papers            # print the table
    python -m benchmarks.papers --readme   # write it into the README, between its markers
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"
REPRODUCED, DIRECTION, NOT = "reproduced", "reproduced in direction only", "not reproduced on this model"
VERDICTS = (REPRODUCED, DIRECTION, NOT)


@dataclass(frozen=True)
class Ours:
    figure: str  # our figures, in words, read from the results file
    verdict: str  # one of VERDICTS
    why: str = ""  # the likely reason, where not reproduced (or what limits the comparison)


@dataclass(frozen=True)
class Paper:
    cite: str
    experiment: str
    paper_model: str
    paper_figure: str  # as published, with where it appears
    results: str  # the stem of the results file our figure comes from
    ours: Callable[[dict, dict], Ours]  # (that results file, every results file) -> our figure and verdict


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def judge_errors(results: dict, judge: str) -> str:
    """A judge's measured false-positive and false-negative rates on the hand-labelled answers (judges.json)."""
    measured = results.get("judges", {}).get("judges", {}).get(judge, {}).get("overall")
    if not measured:
        return f"{judge} judge, error rates not measured"
    return f"{judge} judge: FP {_pct(measured['fp_rate'])}, FN {_pct(measured['fn_rate'])}"


# ----- the rules, one per paper -----

def arditi(d: dict, results: dict) -> Ours:
    """Reproduced: ablation removes at least 80% of the baseline's refusals and addition makes at least 80% of
    harmless prompts refuse (Qwen 1.8B in the reference run: 0.70 -> 0.01 and 0.03 -> 0.98). In direction: ablation
    lowers and addition raises the refusal rate."""
    r = d["evaluation"]["refusal_rate"]
    base, abl, harmless, added = r["harmful_baseline"], r["harmful_ablated"], r["harmless_baseline"], r["harmless_added"]
    cut = 1 - abl / base if base else 0.0
    figure = (f"refusal on held-out harmful prompts {_pct(base)} -> {_pct(abl)} ablated; harmless {_pct(harmless)} -> "
              f"{_pct(added)} with addition (n = {d['eval_sets']['n_harmful']} each; "
              f"{judge_errors(results, 'substring_refusal')})")
    if base and cut >= 0.8 and added >= 0.8:
        return Ours(figure, REPRODUCED)
    if abl < base and added > harmless:
        return Ours(figure, DIRECTION, f"ablation removes {_pct(cut)} of the refusals, not nearly all; this model "
                                       f"refuses only {_pct(base)} of the harmful prompts without a system prompt")
    return Ours(figure, NOT, "the chosen direction does not move refusal both ways")


def iti(d: dict, results: dict) -> Ours:
    """Reproduced: MC1 and MC2 both rise by at least 0.03 on held-out questions (the honest_llama replication on
    Llama-2-chat-7B: +0.06 MC1, +0.07 MC2) at a KL of at most 1. In direction: both rise."""
    g1, g2 = d["mc1"]["gain"], d["mc2"]["gain"]
    figure = (f"held-out MC1 {_f(d['mc1']['baseline'])} -> {_f(d['mc1']['iti'])}, MC2 {_f(d['mc2']['baseline'])} -> "
              f"{_f(d['mc2']['iti'])}; KL {_f(d['kl'])}, CE {_f(d['ce']['baseline'])} -> {_f(d['ce']['iti'])} "
              f"({d['n_questions']} questions; True*Info not measured: it needs the GPT judges)")
    if g1 >= 0.03 and g2 >= 0.03 and d["kl"] <= 1:
        return Ours(figure, REPRODUCED)
    if g1 > 0 and g2 > 0:
        return Ours(figure, DIRECTION, "gains smaller than the paper's on a 0.5B coder model")
    return Ours(figure, NOT, "the truthful directions found in this 0.5B coder model barely move its multiple-choice "
                             "answers (the paper's own MC accuracy moved by 0.2 points)")


def _attack_rate(m: dict, kind: str) -> float:
    return m[kind]["rate"] if kind in m else m["success_rate"]


def ssr(d: dict, results: dict) -> Ours:
    """Reproduced: Probe-SSR succeeds on at least 80% of behaviours in one attempt, at least as often as nanoGCG's
    preset, and at least 10 times faster per success. In direction: it succeeds at least as often as each GCG preset
    and takes fewer seconds per success."""
    s = d["ssr"]
    others = [name for name in ("gcg", "nanogcg") if name in d]
    one = {name: _attack_rate(d[name], "single_attempt") for name in ["ssr", *others]}
    best = {name: _attack_rate(d[name], "best_of_n") for name in ["ssr", *others]}
    ratio = {name: d[name]["seconds_per_success"] / s["seconds_per_success"] for name in others}
    figure = ("success in one attempt / best of N: " + ", ".join(
        f"{name} {_pct(one[name])} / {_pct(best[name])}" for name in ["ssr", *others])
        + f" ({s['finished']} behaviours, {d['budget']['forwards_per_behaviour']} forwards each); GCG/SSR seconds per "
        "success " + ", ".join(f"{name} {_f(r, 1)}x" for name, r in ratio.items())
        + f" ({judge_errors(results, 'substantive_success')})")
    faster = all(r >= 10 for r in ratio.values()) and not s["seconds_per_success_is_lower_bound"]
    if one["ssr"] >= 0.8 and all(one["ssr"] >= one[n] for n in others) and faster:
        return Ours(figure, REPRODUCED)
    if all(one["ssr"] >= one[n] for n in others) and all(r > 1 for r in ratio.values()) and one["ssr"] > 0:
        return Ours(figure, DIRECTION, "SSR leads GCG at an equal forward budget, by less than the paper's margin; "
                                       "a 0.5B coder model on 256 forwards per behaviour")
    return Ours(figure, NOT, "at this budget SSR does not beat GCG on this model")


def makelov(d: dict, results: dict) -> Ours:
    """Reproduced: the MLP subspace patch restores at least 30% of the logit difference while the whole MLP restores at
    most 10%, and is diagnosed an illusion; the residual direction restores at least as much as the whole residual
    stream and is judged consistent (the paper: MLP8 46.7% vs -8%; residual 140.7% vs 123.6%). In direction: both
    subspaces beat their whole component and the two diagnoses match the paper's."""
    sites = d["sites"]
    resid = next(v for k, v in sites.items() if "resid" in k)
    mlp = next(v for k, v in sites.items() if "mlp" in k)
    figure = (f"IOI (position variable), 1-D DAS: MLP ({mlp['site']}) restores {_pct(mlp['recovery']['das'])} vs the "
              f"whole MLP {_pct(mlp['recovery']['full'])}, verdict \"{mlp['verdicts']['das']}\"; residual "
              f"({resid['site']}) {_pct(resid['recovery']['das'])} vs the whole stream {_pct(resid['recovery']['full'])}, "
              f"verdict \"{resid['verdicts']['das']}\" (test items from disjoint names and templates)")
    illusion = mlp["verdicts"]["das"] != "consistent" and resid["verdicts"]["das"] == "consistent"
    beats = mlp["recovery"]["das"] > mlp["recovery"]["full"] and resid["recovery"]["das"] >= resid["recovery"]["full"]
    if illusion and beats and mlp["recovery"]["das"] >= 0.3 and mlp["recovery"]["full"] <= 0.1:
        return Ours(figure, REPRODUCED)
    if illusion and beats:
        return Ours(figure, DIRECTION, "the MLP subspace restores less than the paper's; another model and task "
                                       "variant (a 0.5B coder model, not GPT-2 small)")
    return Ours(figure, NOT, "the illusion's signature (subspace beats the whole MLP, dormant pathway) is absent here")


def talking_heads(d: dict, results: dict) -> Ours:
    """Reproduced: one of the two channel edits (removed, amplified) raises Laundry List accuracy by at least 0.2
    averaged over the list lengths (the paper: "often improving task accuracy by over 20%"). In direction: one raises
    it on average. Both edits' changes are shown, so the better of the two is not a hidden choice."""
    table = {k: v for k, v in d["table"].items() if k.startswith("laundry")}
    edits = [e for e in next(iter(table.values())) if e != "none" and not e.startswith("control")]
    mean = {e: sum(rows[e]["accuracy"] - rows["none"]["accuracy"] for rows in table.values()) / len(table)
            for e in edits}
    base = sum(rows["none"]["accuracy"] for rows in table.values()) / len(table)
    figure = (f"Laundry List accuracy, mean over {len(table)} list lengths: unedited {_pct(base)}; change with the "
              "channel " + ", ".join(f"{e.removeprefix('channel_')} {100 * m:+.1f} points" for e, m in mean.items())
              + f" ({d.get('n', '?')} items per length)")
    best = max(mean.values())
    if best >= 0.2:
        return Ours(figure, REPRODUCED)
    if best > 0:
        return Ours(figure, DIRECTION, "little room to improve: the unedited model already recalls most lists")
    return Ours(figure, NOT, "no edit of the channel improves recall on this model, which already recalls most lists")


def gact(d: dict, results: dict) -> Ours:
    """Reproduced: G-ACT's refined probes classify the prompts' clusters at least 0.15 more accurately than the
    unrefined (ACT) ones at the injection layer, as the paper reports on average. In direction: more accurately. The
    steering outcome (target-language share, G-ACT vs the mean vector) is shown beside it."""
    acc = d["probe_accuracy"]
    diffs, parts = [], []
    for target, a in acc.items():
        for v in a["at_injection"].values():
            diffs.append(v["refined"] - v["unrefined"])
            parts.append(f"{target} {_pct(v['unrefined'])} -> {_pct(v['refined'])}")
    share = ", ".join(f"{t} {_pct(r['mean']['target_share'])} / {_pct(r['gact']['target_share'])}"
                      for t, r in d["table"].items())
    figure = (f"probe accuracy at the injection layer, ACT -> G-ACT: {'; '.join(parts)}; target-language share, "
              f"mean vector / G-ACT: {share}")
    mean = sum(diffs) / len(diffs)
    if mean >= 0.15:
        return Ours(figure, REPRODUCED)
    if mean > 0:
        return Ours(figure, DIRECTION, "smaller gain than the paper's")
    return Ours(figure, NOT, "refining the probes by the steering loss lowers their cluster accuracy here; the "
                             "clusters of a 0.5B coder model's prompt differences are few and already separable")


def ponkshe(d: dict, results: dict) -> Ours:
    """Reproduced (the paper's claim is qualitative): in the reference's setting (uncentred, energy share 0.1, its
    window of layers) the activation subspaces of harmful and useful prompts overlap at least as much as those of
    two useful sets (within 10%), far above the max(k)/d baseline, and the harmful and useful fine-tune updates
    overlap above their baseline. In direction: the first holds. The centred overlaps are shown beside them."""
    share = "0.1"

    def at(centring: str, pair: str) -> tuple[float, float]:
        s = d["activations"][centring]["sweep"][pair]
        i = [f"{x:g}" for x in s["shares"]].index(share)
        return s["window_overlap"][i], s["window_expected"][i]

    hu, hu_e = at("uncentred", "harmful vs alpaca")
    uu, uu_e = at("uncentred", "alpaca vs code")
    chu, chu_e = at("centred", "harmful vs alpaca")
    cuu, _ = at("centred", "alpaca vs code")
    acts = d["activations"]["uncentred"]
    lo, hi = acts["window_layers"]
    k1 = acts["by_share"][share]["layers_with_k1"]
    all_k1 = all(v == len(acts["by_share"][share]["k"][name]) for name, v in k1.items())
    upd = d["updates"]["totals"][share]["all"]
    figure = (f"activations, energy {share}, layers {lo}-{hi} (the paper's window), uncentred as the reference"
              + (" (k = 1 at every layer: the subspace is the set's mean direction)" if all_k1 else "")
              + f": harmful vs Alpaca {_f(hu)}, Alpaca vs code {_f(uu)} (baseline {_f(max(hu_e, uu_e), 3)}); centred: "
              f"{_f(chu)} and {_f(cuu)} (baseline {_f(chu_e, 3)}); fine-tune updates, useful vs harmful "
              f"{_f(upd['overlap'], 3)} (baseline {_f(upd['expected'], 3)})")
    ok = hu >= 0.9 * uu and hu > 2 * hu_e
    if ok and upd["overlap"] > upd["expected"]:
        return Ours(figure, REPRODUCED)
    if ok:
        return Ours(figure, DIRECTION, "the update spaces of the two fine-tunes do not overlap above chance")
    return Ours(figure, NOT, "harmful and useful prompts occupy separable subspaces here")


PAPERS: tuple[Paper, ...] = (
    Paper("Arditi et al. 2024, refusal direction", "ablate the difference-in-means direction at every layer: harmful "
          "prompts stop being refused; add it: harmless prompts are refused", "Qwen 1.8B chat",
          "refusal 0.70 -> 0.01 ablated (JailbreakBench, n = 100); harmless 0.03 -> 0.98 with addition (reference "
          "code's run, andyrdt/refusal_direction; Llama-3 8B, paper Table 10: 0.95 -> 0.01)",
          "refusal_qwen05", arditi),
    Paper("Li et al. 2023, ITI", "shift the top-K heads along their truthful directions at inference; score "
          "TruthfulQA on held-out folds", "LLaMA-7B",
          "True*Info 30.5 -> 43.5, MC acc. 25.7 -> 25.9, CE 2.16 -> 2.48, KL 0.40 (Table 1); the reference code's "
          "replication on Llama-2-chat-7B: MC1 0.34 -> 0.40, MC2 0.51 -> 0.58, KL 0.65",
          "truthful_qwen05", iti),
    Paper("Winninger et al. 2025, subspace rerouting (SSR)", "optimise a suffix so that activations move into the "
          "acceptance subspace of linear probes; compare with nanoGCG", "Qwen2.5 1.5B Instruct",
          "attack success 0.91 Probe-SSR vs 0.85 nanoGCG; 0.1 vs 2181 minutes per jailbreak (Table 1 and the appendix "
          "time table, Sckathach/subspace-rerouting paper source)", "attack_qwen05", ssr),
    Paper("Makelov et al. 2024, subspace patching illusion", "1-D DAS subspace patching on IOI: the MLP subspace "
          "restores behaviour the whole MLP does not (an illusion); the residual-stream direction is faithful",
          "GPT-2 small", "MLP8 subspace 46.7% of the logit difference vs the whole MLP8 -8%; residual direction "
          "140.7% vs the whole stream 123.6% (Table 1, as transcribed; Wu et al.'s reply agrees)", "das_qwen05",
          makelov),
    Paper("Merullo et al. 2024, Talking Heads", "edit the low-rank channel from inhibition heads to mover heads "
          "(SVD components of OV and QK); Laundry List recall", "GPT-2 small, Pythia-160m",
          "\"often improving task accuracy by over 20%\" (abstract; per-length figures only in the paper's plots)",
          "heads_qwen05", talking_heads),
    Paper("Sharma & Raman 2025, G-ACT", "cluster prompt activation differences into steering vectors, refine "
          "per-layer probes by gradient, steer code generation to a target language", "LLaMA-3.2 3B",
          "probe accuracy +15% on average over ACT, +61.5% in layers 0-6 (abstract; the static neuron-attribution "
          "baseline \"brittle\", no figure)", "concepts_qwen05", gact),
    Paper("Ponkshe et al. 2025, safety subspaces", "compare subspaces of harmful and useful fine-tune updates and "
          "of harmful and useful prompts' activations (mode subspace overlap vs max(k)/d)", "Llama and Qwen, 1B-8B",
          "qualitative: \"subspaces that amplify safe behaviors also amplify useful ones, and prompts with different "
          "safety implications activate overlapping representations\" (abstract; no overlap figure verified)",
          "overlap_qwen05", ponkshe),
)


def load_results(results: Path = RESULTS) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(results.glob("*.json"))}


def rows(results: dict[str, dict] | None = None) -> list[tuple[Paper, Ours]]:
    """Each paper with our figure and verdict; raises KeyError naming a missing results file."""
    results = load_results() if results is None else results
    out = []
    for paper in PAPERS:
        if paper.results not in results:
            raise KeyError(f"{paper.cite}: benchmarks/results/{paper.results}.json is missing; run its benchmark")
        out.append((paper, paper.ours(results[paper.results], results)))
    return out


def our_model(data: dict) -> str:
    """The bundled model a results file measured (its `model`, `model/name` or `activations/model`)."""
    model = data.get("model") or data.get("activations", {}).get("model", "")
    return model.get("name", "") if isinstance(model, dict) else str(model)


def papers_markdown(results: dict[str, dict] | None = None,
                    link: Callable[[str], str] = lambda stem: f"benchmarks/results/{stem}.json") -> str:
    """The table as Markdown: paper, experiment, the paper's model and figure, ours (model and figure, linked to the
    results file by `link(stem)`), verdict and the likely reason."""
    results = load_results() if results is None else results
    out = ["| paper | headline experiment | paper's model: figure | ours | verdict |", "|---|---|---|---|---|"]
    for paper, ours in rows(results):
        verdict = f"**{ours.verdict}**" + (f": {ours.why}" if ours.why else "")
        cells = [paper.cite, paper.experiment, f"{paper.paper_model}: {paper.paper_figure}",
                 f"{our_model(results[paper.results])}: {ours.figure} ([{paper.results}]({link(paper.results)}))",
                 verdict]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(out)


README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- papers table: generated", "<!-- end of papers table -->"


def readme_block(text: str) -> str:
    """The table the README holds between its markers."""
    start = text.index("\n", text.index(START)) + 1
    return text[start:text.index(END)].strip()


def write_readme(path: Path = README) -> None:
    """Replace the README's table with the current one (written to a temporary file, then renamed)."""
    text = path.read_text(encoding="utf-8")
    start = text.index("\n", text.index(START)) + 1
    new = text[:start] + papers_markdown() + "\n" + text[text.index(END):]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    import sys

    if "--readme" in sys.argv[1:]:
        write_readme()
        print(f"wrote the papers table into {README}")
    else:
        print(papers_markdown())
