"""Talking Heads made faithful (issue 19): the data-based inhibition score of a channel (checked against a hand
computation with plain transformers, zero for an empty channel or a receiver that does not read it), and receivers
chosen on items the scoring never uses. Tiny random models only (unit tier)."""

from __future__ import annotations

import copy

import pytest
import torch

from analyses import heads as heads_analysis
from interp.circuits import heads as H
from interp.circuits.tasks import make_task
from interp.errors import InterpError
from tests.tiny import tiny_model

SENDER, RECEIVER = (0, 1), (1, 2)
PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "Then, Anna and Bob had a long argument, and afterwards Bob said to",
           "When Lisa and Tom got a book at the park, Tom decided to give it to"]
TARGETS, INHIBITED = [" Mary", " Anna", " Lisa"], [" John", " Bob", " Tom"]


@pytest.fixture(scope="module")
def model(tokenizer):
    m = tiny_model("llama", tokenizer, device="cpu", seed=3)
    m.hf.requires_grad_(False)
    return m


def _ids(model, words):
    return torch.tensor([model.tokenizer(w, add_special_tokens=False).input_ids[0] for w in words])


@torch.no_grad()
def _gaps_by_hand(model, hf) -> torch.Tensor:
    """Per prompt, with plain transformers (eager attention, one prompt at a time, no padding): the receiver's
    attention at the last token to every position of the target token minus every position of the inhibited one."""
    hf.set_attn_implementation("eager")
    gaps = []
    for prompt, t, w in zip(PROMPTS, _ids(model, TARGETS).tolist(), _ids(model, INHIBITED).tolist()):
        ids = model.encode([prompt])[0]
        out = hf(torch.tensor([ids]), output_attentions=True)
        row = out.attentions[RECEIVER[0]][0, RECEIVER[1], -1]  # [key]
        gaps.append(float(row[[i for i, x in enumerate(ids) if x == t]].sum() - row[[i for i, x in enumerate(ids) if x == w]].sum()))
    return torch.tensor(gaps)


def test_inhibition_score_matches_a_hand_computation(model):
    """The score of removing components 0 and 1 of the sender is the mean over prompts of the receiver's gap
    a(target) - a(inhibited) in the clean model minus the same gap in a copy whose W_O has the channel removed
    (`edited_copy`), both computed here with plain transformers."""
    svds = H.head_svds(model)
    (got,) = H.inhibition_scores(model, PROMPTS, _ids(model, TARGETS), _ids(model, INHIBITED), SENDER, RECEIVER,
                                 [[0, 1]], svds)
    clean = _gaps_by_hand(model, copy.deepcopy(model.hf))
    edit = H.ChannelEdit(*SENDER, H.write_directions(svds, *SENDER, [0, 1]), 0.0)
    edited = _gaps_by_hand(model, H.edited_copy(model, [edit]))
    assert torch.allclose(got.clean[:, 0] - got.clean[:, 1], clean, atol=1e-5)
    assert torch.allclose(got.per_item, clean - edited, atol=1e-5)
    assert abs(got.score - float((clean - edited).mean())) < 1e-5 and abs(got.score) > 1e-5  # the edit matters
    s = got.summary()
    assert s["items"] == 3 and s["components"] == [0, 1] and abs(s["clean_gap"] - float(clean.mean())) < 1e-5


def test_inhibition_score_is_zero_for_an_empty_channel_or_a_deaf_receiver(model):
    """No component: nothing is edited and the score is exactly zero. A receiver whose queries are zero attends
    uniformly whatever the sender writes, so even removing the sender's whole output scores zero."""
    t, w = _ids(model, TARGETS), _ids(model, INHIBITED)
    empty, whole = H.inhibition_scores(model, PROMPTS, t, w, SENDER, RECEIVER, [[], list(range(model.d_head))])
    assert empty.score == 0.0 and torch.equal(empty.clean, empty.edited) and abs(whole.score) > 1e-5
    deaf = tiny_model("llama", model.tokenizer, device="cpu", seed=3)
    with torch.no_grad():
        q = deaf.layers[RECEIVER[0]].self_attn.q_proj.weight
        q[RECEIVER[1] * deaf.d_head:(RECEIVER[1] + 1) * deaf.d_head] = 0
    (none,) = H.inhibition_scores(deaf, PROMPTS, t, w, SENDER, RECEIVER, [list(range(deaf.d_head))])
    assert abs(none.score) < 1e-6


def test_inhibition_inputs_are_checked(model):
    t, w = _ids(model, TARGETS), _ids(model, INHIBITED)
    with pytest.raises(InterpError, match="must be earlier"):
        H.inhibition_scores(model, PROMPTS, t, w, RECEIVER, SENDER, [[0]])
    with pytest.raises(InterpError, match="give one of each"):
        H.inhibition_scores(model, PROMPTS, t[:2], w, SENDER, RECEIVER, [[0]])
    with pytest.raises(InterpError, match="does not contain the token"):
        H.inhibition_scores(model, PROMPTS, _ids(model, [" Paris"] * 3), w, SENDER, RECEIVER, [[0]])


def test_split_items_is_disjoint_and_keeps_duplicates_together():
    task = make_task("ioi", 20, seed=1)
    task = task.subset(list(range(20)) + [0, 1])  # two repeated prompts
    select, score = heads_analysis.split_items(task, 0.5, seed=0)
    assert sorted(select + score) == list(range(22)) and not set(select) & set(score)
    clean = task.clean
    assert not {clean[i] for i in select} & {clean[i] for i in score}
    assert heads_analysis.split_items(task, 0.5, seed=0) == (select, score)
    with pytest.raises(InterpError, match="select_share"):
        heads_analysis.split_items(task, 1.0)


def test_receivers_are_chosen_without_the_scoring_items(model, monkeypatch):
    """`channels` hands the receiver chooser (direct effects) the select part only, and scores inhibition on the
    score part only: the two never share a prompt, and the Result says which part each figure uses."""
    task = make_task("ioi", 16, seed=2)
    seen: dict[str, list[str]] = {}
    direct, inhibition = heads_analysis.direct_effects, H.inhibition_scores

    def chooser(m, prompts, *args, **kwargs):
        seen.setdefault("chooser", []).extend(prompts)
        return direct(m, prompts, *args, **kwargs)

    def scorer(m, prompts, *args, **kwargs):
        seen.setdefault("scorer", []).extend(prompts)
        return inhibition(m, prompts, *args, **kwargs)

    monkeypatch.setattr(heads_analysis, "direct_effects", chooser)
    monkeypatch.setattr(H, "inhibition_scores", scorer)
    heads = heads_analysis.run(model, None, heads_analysis.HeadsConfig(modes=("Q",), baseline_samples=8))
    study = heads_analysis.channels(model, task, heads, heads_analysis.ChannelsConfig(receivers=2, per_component=False))
    select = {task.clean[i] for i in study.split["select"]}
    score = {task.clean[i] for i in study.split["score"]}
    assert set(seen["chooser"]) == select and set(seen["scorer"]) == score and not select & score
    assert len(study.pairs) == 2 and all(p["receiver"][0] > p["sender"][0] for p in study.pairs)
    s = study.summary()
    assert s["figures_use"] == {"direct_effects": "select", "inhibition_components": "score",
                                "inhibition_channels": "score"}
    assert s["split"]["select"]["items"] + s["split"]["score"]["items"] == 16
    assert {"channel", "control"} <= set(s["pairs"][0]["inhibition"])
    assert set(study.figures()) == {"direct_effects", "inhibition_channels", "inhibition_components"}


def test_per_component_scores_sit_beside_composition_scores(model):
    """With `per_component`, every sender component is scored alone on the score part (the paper's Figure 2)."""
    task = make_task("ioi", 8, seed=3)
    heads = heads_analysis.run(model, None, heads_analysis.HeadsConfig(modes=("Q",), baseline_samples=8))
    study = heads_analysis.channels(model, task, heads, heads_analysis.ChannelsConfig(receivers=1))
    (pair,) = study.pairs
    per = pair["inhibition"]["components"]
    assert [c["components"] for c in per] == [[i] for i in range(model.d_head)]
    assert len(pair["component_scores"]) == model.d_head
    assert all(c["items"] == len(study.split["score"]) for c in per)


def test_heads_cli_checks_channels_on_held_out_items(model, monkeypatch, tmp_path):
    """`interp heads --task ioi` writes the weight analysis and OUT/channels/ with the split, the chosen receivers
    and their inhibition scores on the score part."""
    import json

    from typer.testing import CliRunner

    from interp.cli import app

    monkeypatch.setattr("interp.cli.common.load_model", lambda name, backend="hooks": model)
    out = tmp_path / "heads"
    res = CliRunner().invoke(app, ["heads", "--model", "smollm2-135m-instruct", "--out", str(out), "--modes", "Q",
                                   "--baseline-samples", "8", "--task", "ioi", "--n", "8", "--receivers", "1",
                                   "--no-components"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = json.loads((out / "channels" / "result.json").read_text())
    assert got["split"]["select"]["items"] + got["split"]["score"]["items"] == 8
    assert not set(got["split"]["select"]["indices"]) & set(got["split"]["score"]["indices"])
    assert len(got["pairs"]) == 1 and "inhibition" in res.output and (out / "channels" / "report.html").is_file()
    bad = CliRunner().invoke(app, ["heads", "--out", str(tmp_path / "bad"), "--task", "capitals"])
    assert bad.exit_code != 0 and "--task must be ioi or laundry" in str(bad.exception)
