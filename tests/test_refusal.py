"""The refusal-direction analysis end to end (SmolLM2 for plumbing; Qwen-0.5B, the real case, marked slow)."""

from __future__ import annotations

import json

import pytest
import torch

from analyses import refusal
from interp.errors import InterpError
from interp.judges import RefusalScore
from interp.prompts import dataset
from interp.subspace import Direction, Subspace


@pytest.fixture(scope="module")
def smol_result(smol):
    # SmolLM2 hardly ever refuses, so its refusal tokens are given by hand: this exercises the plumbing only.
    refusal_ids = smol.tokenizer("I", add_special_tokens=False).input_ids
    cfg = refusal.RefusalConfig(n_val=3, shortlist=3)
    return refusal.run(smol, dataset("harmful_train", n=9), dataset("harmless_train", n=9), config=cfg,
                       refusal=RefusalScore(refusal_ids=refusal_ids))


def test_result_has_direction_table_and_figures(smol, smol_result, tmp_path):
    r = smol_result
    n_pos, n_layers = smol.n_eoi, int(0.8 * smol.n_layers) - 1
    assert r.mean_diffs.shape == (n_pos, n_layers, smol.d_model)
    assert len(r.candidates) == n_pos * n_layers
    scored = [c for c in r.candidates if "ablation_score" in c]
    assert len(scored) == 3  # the shortlist, scored exactly
    assert all("predicted_ablation" in c for c in r.candidates)
    assert r.chosen["layer"] < 0.8 * smol.n_layers
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
    from interp.interventions import Ablate

    r = smol_result
    # recompute on the same validation prompts: those held out by the seeded split
    _, harmful_val = refusal._split(dataset("harmful_train", n=9), 3, 0, "harmful")
    with smol.intervene(Ablate(r.direction)):
        direct = r.refusal.score_logits(smol.logits(harmful_val)).mean().item()
    assert abs(direct - r.chosen["ablation_score"]) < 1e-3


def test_bad_prompt_sets(smol):
    with pytest.raises(InterpError, match="empty"):
        refusal.run(smol, [], ["Hi", "Bye"])
    with pytest.raises(InterpError, match="at least"):
        refusal.run(smol, ["a", "b"], ["c", "d"])


@pytest.mark.slow
def test_qwen_refusal_direction_works(qwen):
    """On the real refusing model: ablation cuts refusals of held-out harmful prompts."""
    res = refusal.run(qwen, dataset("harmful_train", n=40), dataset("harmless_train", n=40))
    ev = refusal.evaluate(qwen, res.direction, dataset("harmful_val", n=12), dataset("harmless_val", n=6), max_new_tokens=32)
    rates = ev["refusal_rate"]
    assert rates["harmful_baseline"] >= 0.5
    assert rates["harmful_ablated"] <= 0.5 * rates["harmful_baseline"]
