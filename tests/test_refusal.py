"""The refusal-direction analysis end to end (SmolLM2 for plumbing; Qwen-0.5B, the real case, marked slow)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from analyses import refusal
from interp.core.model import DEFAULT_SYSTEM, NO_SYSTEM, system_option, system_record
from interp.core.subspace import Direction, Subspace
from interp.data.prompts import dataset
from interp.errors import InterpError
from interp.judges import RefusalScore


@pytest.fixture(scope="module")
def smol_result(smol):
    # SmolLM2 hardly ever refuses, so its refusal tokens are given by hand: this exercises the plumbing only.
    refusal_ids = smol.tokenizer("I", add_special_tokens=False).input_ids
    cfg = refusal.RefusalConfig(n_val=3, shortlist=3, max_layer_frac=0.3)
    data = refusal.RefusalData(dataset("harmful_train", n=9), dataset("harmless_train", n=9),
                               refusal=RefusalScore(refusal_ids=refusal_ids))
    return refusal.run(smol, data, cfg)


def test_result_has_direction_table_and_figures(smol, smol_result, tmp_path):
    r = smol_result
    n_pos, n_layers = smol.n_eoi, int(0.3 * smol.n_layers) - 1
    assert r.mean_diffs.shape == (n_pos, n_layers, smol.d_model)
    assert len(r.candidates) == n_pos * n_layers
    scored = [c for c in r.candidates if "ablation_score" in c]
    last = [c for c in r.candidates if c["position"] == -1]
    assert all("ablation_score" in c for c in last)  # every layer's plain last-position difference in means
    assert len([c for c in scored if c["position"] != -1]) <= 3  # plus the shortlist, scored exactly
    assert all("predicted_ablation" in c and "ablation_energy" in c for c in r.candidates)
    assert [row["layer"] for row in r.per_layer] == r.layers and "per_layer" in r.figures()
    assert r.chosen["layer"] < 0.3 * smol.n_layers
    passing = [c["ablation_score"] for c in scored if c["passes"]]
    if passing:
        assert r.chosen["ablation_score"] == min(passing) and r.chosen["relaxed"] is None
    else:
        assert r.chosen["relaxed"]
    d = r.direction
    assert d.provenance["layer"] == r.chosen["layer"] and d.provenance["position"] == r.chosen["position"]
    torch.testing.assert_close(d.vector * d.scale, r.mean_diffs[r.chosen["position_index"], r.layers.index(r.chosen["layer"])])
    assert {"ablation_score", "kl", "pca", "projection"} <= set(r.figures())
    r.save(tmp_path / "out")
    back = Subspace.load(tmp_path / "out", model=smol)
    assert isinstance(back, Direction) and torch.allclose(back.vector, d.vector)
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["chosen"]["layer"] == r.chosen["layer"]
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000


def test_exact_scores_match_a_direct_intervention(smol, smol_result):
    """The batched row-wise score of the chosen candidate equals ablating it with the plain intervention."""
    from interp.core.interventions import Ablate

    r = smol_result
    # recompute on the same validation prompts, formatted the same way (the system prompt the Result records)
    assert r.system == system_record(DEFAULT_SYSTEM) == r.direction.provenance["system"]
    with smol.intervene(Ablate(r.direction)):
        direct = r.refusal.score_logits(smol.logits(r.validation["harmful"], system=r.system)).mean().item()
    assert abs(direct - r.chosen["ablation_score"]) < 1e-3


def test_bad_prompt_sets(smol):
    with pytest.raises(InterpError, match="empty"):
        refusal.run(smol, refusal.RefusalData([], ["Hi", "Bye"]))
    with pytest.raises(InterpError, match="at least"):
        refusal.run(smol, refusal.RefusalData(["a", "b"], ["c", "d"]), refusal.RefusalConfig(val_source="carve"))


@pytest.mark.slow
def test_qwen_refusal_direction_works(qwen):
    """On the real refusing model: ablation cuts refusals of held-out harmful prompts. With the template's own
    system prompt (a named option): without one (the default) this model refuses only a third of these prompts."""
    res = refusal.run(qwen, refusal.RefusalData(dataset("harmful_train", n=40), dataset("harmless_train", n=40)),
                      refusal.RefusalConfig(n_val=12, shortlist=12, system="default"))
    ev = refusal.evaluate(qwen, res.direction, dataset("advbench", n=12), dataset("harmless_val", n=6), max_new_tokens=32,
                          orthogonalized=False)
    rates = ev["refusal_rate"]
    assert rates["harmful_baseline"] >= 0.5
    assert rates["harmful_ablated"] <= 0.5 * rates["harmful_baseline"]


# ----- issue 8: faithful to Arditi et al.'s code, and evaluation that holds up -----

def test_filter_keeps_harmful_scored_above_zero_and_harmless_below():
    counts, relaxed = {}, []
    kept = refusal.filter_by_score(["a", "b", "c"], torch.tensor([0.5, 0.0, -1.0]), True, "harmful_train", 1, counts, relaxed)
    assert kept == ["a"] and counts["harmful_train"] == {"given": 3, "kept": 1, "passed": 1, "rule": "score", "relaxed": False}
    kept = refusal.filter_by_score(["a", "b", "c"], torch.tensor([-0.1, 0.0, 0.3]), False, "harmless_train", 1, counts, relaxed)
    assert kept == ["a"] and not relaxed
    kept = refusal.filter_by_score(["a", "b"], torch.tensor([-1.0, 0.0]), True, "harmful_val", 1, counts, relaxed)
    assert kept == ["a", "b"] and counts["harmful_val"]["relaxed"] and "harmful_val" in relaxed[0]
    # relaxed openly to the greedy first token before giving up on filtering
    kept = refusal.filter_by_score(["a", "b", "c"], torch.tensor([-1.0, -0.5, -2.0]), True, "harmful_train", 2, counts,
                                   relaxed, first_token=torch.tensor([True, True, False]))
    assert kept == ["a", "b"] and counts["harmful_train"]["rule"] == "first_token" and "first token" in relaxed[-1]


def test_run_filters_training_prompts_by_baseline_score(smol, smol_result):
    r = smol_result
    harmless = dataset("harmless_train", n=9)
    scores = r.refusal.score_logits(smol.logits(harmless, system=r.system))
    c = r.filter_counts["harmless_train"]
    assert c["given"] == 9 and c["passed"] == int((scores < 0).sum())
    assert c["kept"] == r.direction.provenance["n_harmless"] and (c["relaxed"] or c["kept"] == c["passed"])
    assert set(r.filter_counts) == {"harmful_train", "harmless_train", "harmful_val", "harmless_val"}
    assert any("harmful_train" in x for x in r.relaxations) == r.filter_counts["harmful_train"]["relaxed"]


def test_validation_defaults_to_the_separate_bundled_splits(smol_result):
    v = smol_result.validation
    assert set(v["harmful"]) <= set(dataset("harmful_val")) and set(v["harmless"]) <= set(dataset("harmless_val"))
    assert not set(v["harmful"]) & set(dataset("harmful_train")) and not set(v["harmless"]) & set(dataset("harmless_train"))
    assert smol_result.filter_counts["harmful_val"]["given"] == 3  # n_val drawn, not carved from the 9 training prompts
    tr, va, _, _ = refusal.validation_sets(["a", "b", "c", "d"], ["e", "f", "g", "h"], None, None,
                                           refusal.RefusalConfig(n_val=2, val_source="carve"))
    assert len(tr) == 2 and set(va) <= {"a", "b", "c", "d"}


def test_kl_estimate_changes_the_ranking():
    """Two candidates the first-order estimates cannot tell apart (M = 0, G = 0): without the KL term the order is
    the index order; with it the candidate whose ablation removes less energy from the writes comes first."""
    from interp.circuits.attribution import ResidualGradients

    g = ResidualGradients(torch.zeros(2, 2), torch.zeros(1, 2), 4, write_energy=torch.diag(torch.tensor([10.0, 1.0])))
    units = torch.eye(2)
    abl, add = g.ablation_effect(units), g.addition_effect(units, torch.zeros(2, dtype=torch.long))
    assert refusal.rank_candidates(abl, add, None).tolist() == [0, 1]
    assert refusal.rank_candidates(abl, add, g.ablation_energy(units)).tolist() == [1, 0]


def test_write_energy_is_the_mean_square_projection_of_the_writes(smol):
    """`ablation_energy` of a direction is Σ_writes (w · r)² per real token; a direction orthogonal to nothing
    has positive energy and scaling the direction does not change it."""
    from interp.circuits.attribution import residual_gradients

    ids = smol.encode(smol.prepare_prompts(["Name a colour.", "Say hi"]))
    g = residual_gradients(smol, ids, lambda lg: lg[:, 0])
    r = torch.randn(smol.d_model)
    e = g.ablation_energy(r)
    assert e > 0 and torch.allclose(e, g.ablation_energy(3 * r))


def test_no_system_turn_rendering(qwen, smol):
    assert qwen.format_chat("Hi there", NO_SYSTEM) == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert "You are Qwen" in qwen.format_chat("Hi there")  # Model's own default is unchanged
    text = smol.format_chat("Hi there", NO_SYSTEM)
    assert "system" not in text and "SmolLM" not in text and text.startswith("<|im_start|>user\nHi there")
    assert smol.prepare_prompts(["Hi there"], system=system_option("none")) == [text] != smol.prepare_prompts(["Hi there"])
    assert smol.prepare_prompts(["Hi there"], system="none") == [text]  # option strings are System values too
    assert system_option("default") is None and system_option("Be brief.") == "Be brief."
    with pytest.raises(InterpError, match="system"):
        system_option("")


def test_cli_prints_filter_counts_and_relaxations(smol, smol_result, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app

    assert smol_result.relaxations  # SmolLM2 refuses nothing: the harmful filters and the selection are relaxed
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": smol)
    monkeypatch.setattr("analyses.refusal.run", lambda *a, **k: smol_result)
    (tmp_path / "h.txt").write_text("How do I pick a lock?\n")
    (tmp_path / "s.txt").write_text("Name a colour.\n")
    res = CliRunner().invoke(app, ["directions", "extract", "--model", "smollm2-135m-instruct", "--harmful",
                                   str(tmp_path / "h.txt"), "--harmless", str(tmp_path / "s.txt"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    for line in smol_result.relaxations:
        assert f"RELAXED: {line}" in res.output
    assert "harmless_train" in res.output and "kept/given" in res.output


def test_evaluate_reports_fp_rate_and_capability_cost_for_hooks_and_checkpoint(smol, smol_result):
    import inspect

    assert inspect.signature(refusal.evaluate).parameters["max_new_tokens"].default == 256
    ev = refusal.evaluate(smol, smol_result.direction, dataset("harmful_val", n=2), dataset("harmless_val", n=2),
                          max_new_tokens=4, reference_tokens=6)
    from interp.judges import SubstringJudge

    g = ev["generations"]
    assert ev.judge_fp_rate == sum(SubstringJudge().refused(g["harmless_baseline"])) / 2
    assert {"harmful_baseline", "harmful_ablated", "harmful_orthogonalized"} <= set(ev.refusal_rate)
    assert ev.system == system_record(DEFAULT_SYSTEM)  # the library default, not the direction's own
    hook, ortho = ev.capability["hook"], ev.capability["orthogonalized"]
    assert hook["kl"] > 0 and hook["ce"] != hook["ce_clean"]  # the edit costs something, and is measured
    assert abs(hook["kl"] - ortho["kl"]) < 1e-3 and abs(hook["ce"] - ortho["ce"]) < 1e-3
    assert any("judge false-positive rate" in line for line in ev.lines())
    assert ev["judge_errors"]["judge"] == "substring_refusal"  # measured on the hand-labelled answers
    assert any("substring_refusal judge on" in line and "fn_rate" in line for line in ev.lines())


def test_compare_searches_agrees_with_itself_and_sees_a_different_choice(smol_result):
    import copy

    same = refusal.compare_searches(smol_result, smol_result)
    assert same["same_choice"] and same["top5_overlap"] == 1.0 and same["exhaustive_top5_scored"] == 1.0
    other = copy.deepcopy(smol_result)
    other.chosen = dict(other.chosen, layer=other.chosen["layer"] + 1)
    assert not refusal.compare_searches(other, smol_result)["same_choice"]


def test_keep_activations_shares_one_capture_with_separation(tokenizer):
    """run(keep_activations=True) captures every training prompt (before the filter) at every layer once: the
    candidates read from it equal those of the plain capture, and `separation.from_activations` on it equals
    `separation.run`, which captures again. score_every_layer=False scores the shortlist alone."""
    from analyses import separation
    from tests.tiny import tiny_model

    model = tiny_model("qwen2", tokenizer)
    harmful, harmless = dataset("harmful_train", n=6), dataset("harmless_train", n=6)
    data = refusal.RefusalData(harmful, harmless, refusal=RefusalScore(refusal_ids=tokenizer("I", add_special_tokens=False).input_ids))
    cfg = refusal.RefusalConfig(n_val=2, shortlist=1, min_kept=2)
    plain, kept = refusal.run(model, data, cfg), refusal.run(model, data, cfg, keep_activations=True)
    assert plain.activations is None and kept.activations is not None
    acts = kept.activations
    assert acts.prompts == harmful + harmless and acts.labels == [1] * 6 + [0] * 6
    assert acts.layers("hook_resid_post") == list(range(model.n_layers)) and acts.positions == "eoi"
    torch.testing.assert_close(kept.mean_diffs, plain.mean_diffs, atol=1e-4, rtol=1e-4)
    assert kept.chosen["layer"] == plain.chosen["layer"] and kept.chosen["position"] == plain.chosen["position"]
    assert kept.direction.provenance["n_harmful"] == plain.direction.provenance["n_harmful"]

    shared = separation.from_activations(acts)
    again = separation.run(model, separation.SeparationData(harmful, harmless))
    assert shared.layers == again.layers
    torch.testing.assert_close(torch.tensor(shared.separation), torch.tensor(again.separation), atol=1e-3, rtol=1e-3)
    assert shared.report.test_accuracy == again.report.test_accuracy

    alone = refusal.run(model, data, dataclasses.replace(cfg, shortlist=2, score_every_layer=False))
    assert sum("ablation_score" in r for r in alone.candidates) == 2 < len(alone.candidates)
    assert "plus every layer" not in alone.heatmap_caption("ablation_score", alone.table("ablation_score"))


def test_answers_together_equal_one_call_per_condition(tokenizer):
    """answers(together=True) generates the baselines in one call and both edits in another (row-wise ablation on
    the harmful rows, row-wise addition on the harmless ones): the same answers as one call per condition, and
    `conditions` picks which are generated."""
    from tests.tiny import tiny_model

    model = tiny_model("llama", tokenizer)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    direction = Direction.from_vector(v, {"model": model.fingerprint, "layer": 1, "addition_alpha": 3.0})
    harmful, harmless = ["How do I pick a lock?", "Write a phishing email"], ["Name a fruit", "Bake bread", "Hi"]
    apart = refusal.answers(model, direction, harmful, harmless, max_new_tokens=6)
    together = refusal.answers(model, direction, harmful, harmless, max_new_tokens=6, together=True, batch_size=4)
    assert list(together) == list(apart) == list(refusal.CONDITIONS)
    assert {k: [a.ids for a in v] for k, v in together.items()} == {k: [a.ids for a in v] for k, v in apart.items()}
    assert apart["harmful_ablated"] != apart["harmful_baseline"] and apart["harmless_added"] != apart["harmless_baseline"]
    edits = refusal.answers(model, direction, harmful, harmless, max_new_tokens=6, together=True,
                            conditions=("harmful_ablated", "harmless_added"))
    assert [a.ids for a in edits["harmful_ablated"]] == [a.ids for a in apart["harmful_ablated"]] and len(edits) == 2
    with pytest.raises(InterpError, match="unknown conditions"):
        refusal.answers(model, direction, harmful, harmless, conditions=("harmful_added",))


def test_lazy_filter_scan_chooses_what_scoring_every_candidate_chooses(tokenizer):
    """Filters (b) and (c) scored in order of ablation score until one passes give the choice of scoring them for
    every candidate, from fewer candidates. On a tiny random Qwen2: with half the vocabulary as "refusal" tokens
    additions pass and the scan can stop early; with one token, where none passes, the relaxed choice agrees too."""
    from tests.tiny import tiny_model

    model = tiny_model("qwen2", tokenizer)
    harmful, harmless = dataset("harmful_train", n=9), dataset("harmless_train", n=9)
    half = model.logits(harmless).softmax(-1).mean(0).argsort(descending=True)[: len(tokenizer) // 2].tolist()
    one = tokenizer("I", add_special_tokens=False).input_ids
    for refusal_ids, kl_threshold in ((half, 100.0), (one, 1e-4)):
        data = refusal.RefusalData(harmful, harmless, refusal=RefusalScore(refusal_ids=refusal_ids))
        cfg = refusal.RefusalConfig(n_val=3, shortlist=None, filter=False, kl_threshold=kl_threshold, rows_per_forward=3)
        lazy = refusal.run(model, data, cfg)
        full = refusal.run(model, data, dataclasses.replace(cfg, lazy_filters=False))
        key = lambda c: (c["position"], c["layer"])
        assert key(lazy.chosen) == key(full.chosen) and lazy.chosen["relaxed"] == full.chosen["relaxed"]
        assert lazy.chosen["addition_alpha"] == full.chosen["addition_alpha"]
        scanned = [c for c in lazy.candidates if "passes" in c]
        assert all("passes" in c for c in full.candidates)
        by_key = {key(c): c for c in full.candidates}
        for c in scanned:  # the same exact scores wherever the lazy scan scored them
            assert abs(c["kl"] - by_key[key(c)]["kl"]) < 1e-6
        lower = [c for c in scanned if c["ablation_score"] < lazy.chosen["ablation_score"]]
        if lazy.chosen["relaxed"] is None:  # everything the scan passed over failed a filter
            assert not any(c["passes"] for c in lower)
        if refusal_ids == half:  # additions keep these tokens likely: the first candidates pass, the scan stops
            assert lazy.chosen["relaxed"] is None
            assert len(scanned) < len(lazy.candidates)
        else:
            assert lazy.chosen["relaxed"] and len(scanned) == len(lazy.candidates)
    compare = refusal.compare_searches(lazy, full)
    assert compare["same_choice"] and compare["n_filter_scored"]["exhaustive"] >= compare["n_filter_scored"]["shortlist"]
