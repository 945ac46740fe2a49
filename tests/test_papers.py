"""benchmarks/papers.py: each paper's verdict rule gives each of its three verdicts on the figures its docstring
names, a missing results file fails in one line naming it, and the judge's error rates stand beside a rate."""

from __future__ import annotations

import pytest

from benchmarks import papers as P

JUDGES = {"judges": {"judges": {"substring_refusal": {"overall": {"fp_rate": 0.01, "fn_rate": 0.02}},
                                "substantive_success": {"overall": {"fp_rate": 0.2, "fn_rate": 0.1}}}}}


def refusal(base: float, abl: float, harmless: float, added: float) -> dict:
    return {"evaluation": {"refusal_rate": {"harmful_baseline": base, "harmful_ablated": abl,
                                            "harmless_baseline": harmless, "harmless_added": added}},
            "eval_sets": {"n_harmful": 32}}


def test_arditi_rule():
    assert P.arditi(refusal(0.9, 0.1, 0.0, 0.9), JUDGES).verdict == P.REPRODUCED
    assert P.arditi(refusal(0.4, 0.15, 0.0, 0.9), JUDGES).verdict == P.DIRECTION
    assert P.arditi(refusal(0.4, 0.4, 0.0, 0.9), JUDGES).verdict == P.NOT
    figure = P.arditi(refusal(0.9, 0.1, 0.0, 0.9), JUDGES).figure
    assert "FP 1%, FN 2%" in figure  # the judge's error rates beside the rate
    assert "not measured" in P.arditi(refusal(0.9, 0.1, 0.0, 0.9), {}).figure


def truthful(g1: float, g2: float, kl: float = 0.2) -> dict:
    return {"mc1": {"baseline": 0.2, "iti": 0.2 + g1, "gain": g1}, "mc2": {"baseline": 0.4, "iti": 0.4 + g2, "gain": g2},
            "kl": kl, "ce": {"baseline": 2.0, "iti": 2.2}, "n_questions": 400}


def test_iti_rule():
    assert P.iti(truthful(0.05, 0.06), {}).verdict == P.REPRODUCED
    assert P.iti(truthful(0.05, 0.06, kl=3.0), {}).verdict == P.DIRECTION
    assert P.iti(truthful(0.01, 0.01), {}).verdict == P.DIRECTION
    assert P.iti(truthful(-0.01, 0.01), {}).verdict == P.NOT


def attack(ssr: float, gcg: float, ratio: float) -> dict:
    def method(rate: float, sps: float) -> dict:
        return {"single_attempt": {"rate": rate}, "best_of_n": {"rate": rate}, "seconds_per_success": sps,
                "seconds_per_success_is_lower_bound": False, "finished": 8}
    return {"ssr": method(ssr, 10.0), "gcg": method(gcg, 10.0 * ratio), "nanogcg": method(gcg, 10.0 * ratio),
            "budget": {"forwards_per_behaviour": 256}}


def test_ssr_rule_reads_single_attempt_success():
    assert P.ssr(attack(0.9, 0.5, 20), JUDGES).verdict == P.REPRODUCED
    assert P.ssr(attack(0.9, 0.5, 4), JUDGES).verdict == P.DIRECTION
    assert P.ssr(attack(0.3, 0.5, 20), JUDGES).verdict == P.NOT
    data = attack(0.9, 0.5, 20)
    data["ssr"]["best_of_n"]["rate"] = 1.0  # best of N is shown, the verdict reads one attempt
    assert "ssr 90% / 100%" in P.ssr(data, JUDGES).figure


def das(mlp: float, mlp_full: float, mlp_verdict: str, resid: float = 0.8, resid_full: float = 0.6) -> dict:
    def site(name: str, das: float, full: float, verdict: str) -> dict:
        return {"site": name, "recovery": {"das": das, "full": full}, "verdicts": {"das": verdict}}
    return {"sites": {"blocks.8.hook_resid_post": site("blocks.8.hook_resid_post", resid, resid_full, "consistent"),
                      "blocks.8.mlp.hook_post": site("blocks.8.mlp.hook_post", mlp, mlp_full, mlp_verdict)}}


def test_makelov_rule():
    assert P.makelov(das(0.45, -0.08, "possible illusion"), {}).verdict == P.REPRODUCED
    assert P.makelov(das(0.1, 0.0, "possible illusion"), {}).verdict == P.DIRECTION
    assert P.makelov(das(0.45, -0.08, "consistent"), {}).verdict == P.NOT


def laundry(change: float) -> dict:
    rows = {"none": {"accuracy": 0.5}, "channel_removed": {"accuracy": 0.5 + change},
            "channel_x2": {"accuracy": 0.5 - change}, "control_removed": {"accuracy": 0.99}}
    return {"table": {"ioi": {"none": {"accuracy": 0.1}, "channel_removed": {"accuracy": 0.9}},
                      "laundry[length=2]": rows, "laundry[length=4]": rows}, "n": 24}


def test_talking_heads_rule_ignores_controls_and_other_tasks():
    assert P.talking_heads(laundry(0.25), {}).verdict == P.REPRODUCED
    assert P.talking_heads(laundry(0.05), {}).verdict == P.DIRECTION
    assert P.talking_heads(laundry(0.0), {}).verdict == P.NOT  # the control edit's +49 points does not count


def concepts(unrefined: float, refined: float) -> dict:
    return {"probe_accuracy": {"cpp": {"at_injection": {"12": {"unrefined": unrefined, "refined": refined}}}},
            "table": {"cpp": {"mean": {"target_share": 0.5}, "gact": {"target_share": 0.6}}}}


def test_gact_rule():
    assert P.gact(concepts(0.6, 0.8), {}).verdict == P.REPRODUCED
    assert P.gact(concepts(0.6, 0.65), {}).verdict == P.DIRECTION
    assert P.gact(concepts(0.8, 0.3), {}).verdict == P.NOT


def overlap(hu: float, uu: float, upd: float) -> dict:
    def sweep(o: float) -> dict:
        return {"shares": [0.01, 0.1, 0.5], "window_overlap": [0.0, o, 0.0], "window_expected": [0.0, 0.01, 0.0]}

    def acts(scale: float) -> dict:
        return {"sweep": {"harmful vs alpaca": sweep(hu * scale), "alpaca vs code": sweep(uu * scale)},
                "window_layers": [15, 20], "by_share": {"0.1": {"layers_with_k1": {"harmful": 2}, "k": {"harmful": [1, 1]}}}}
    return {"activations": {"uncentred": acts(1.0), "centred": acts(0.2)},
            "updates": {"totals": {"0.1": {"all": {"overlap": upd, "expected": 0.1}}}}}


def test_ponkshe_rule():
    assert P.ponkshe(overlap(0.8, 0.82, 0.3), {}).verdict == P.REPRODUCED
    assert P.ponkshe(overlap(0.8, 0.82, 0.05), {}).verdict == P.DIRECTION
    assert P.ponkshe(overlap(0.3, 0.82, 0.3), {}).verdict == P.NOT
    assert "k = 1 at every layer" in P.ponkshe(overlap(0.8, 0.82, 0.3), {}).figure  # the collapse is said


def test_a_missing_results_file_is_named():
    with pytest.raises(KeyError, match="refusal_qwen05.json is missing"):
        P.rows({})
