"""Activation, attribution and path patching on SmolLM2 with a few IOI-style pairs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from interp.circuits import patching as P
from interp.circuits.tasks import TaskItem, TaskSet, TaskTokens
from interp.cli import app
from interp.core.hooks import hooked
from interp.core.interventions import Patch
from interp.core.sites import Site
from interp.errors import InterpError

from .conftest import tol

ITEMS = [  # names are one token in SmolLM2's tokenizer; the two lengths differ, so padding is exercised
    TaskItem("When Mary and John went to the store, John gave a drink to",
             "When Anna and Tom went to the store, Paul gave a drink to", " Mary", " John"),
    TaskItem("When Tom and Sarah went to the park, Sarah gave a book to",
             "When Mike and Lisa went to the park, Emma gave a book to", " Tom", " Sarah"),
    TaskItem("Then, Kate and Paul had a long argument, and afterwards Paul said to",
             "Then, Amy and Sam had a long argument, and afterwards Ben said to", " Kate", " Paul"),
]
TASK = TaskSet("ioi_hand", ITEMS)


@pytest.fixture(scope="module")
def tokens(smol) -> TaskTokens:
    return TASK.tokens(smol)


def _last_logits(model, ids, *interventions) -> torch.Tensor:
    batch = model.pad(ids)
    with torch.no_grad(), model.intervene(*interventions):
        return model.hf(**batch.inputs(), use_cache=False).logits[:, -1].float()


def _capture(model, ids, site: str) -> torch.Tensor:
    got = {}
    with torch.no_grad(), hooked(model, {model.sites(site)[0]: [lambda s, x: got.__setitem__(s, x.detach().clone())]}):
        model.hf(**model.pad(ids).inputs(), use_cache=False)
    return next(iter(got.values()))


@pytest.mark.parametrize("site,heads", [("blocks.3.hook_resid_pre", None), ("blocks.7.attn.hook_z", [1, 4]),
                                        ("blocks.5.hook_mlp_out", None)])
def test_identity_patch_is_bit_exact(smol, tokens, site, heads):
    source = _capture(smol, tokens.corrupted, site)
    plain = _last_logits(smol, tokens.corrupted)
    patched = _last_logits(smol, tokens.corrupted, Patch(site, source, "all", heads=heads))
    assert torch.equal(plain, patched)
    at_positions = _last_logits(smol, tokens.corrupted, Patch(site, source[:, -3:], [-3, -2, -1], heads=heads))
    assert torch.equal(plain, at_positions)


def test_patching_all_of_layer_0_resid_gives_the_clean_logits(smol, tokens):
    clean_resid = _capture(smol, tokens.clean, "blocks.0.hook_resid_pre")
    clean = _last_logits(smol, tokens.clean)
    corrupted = _last_logits(smol, tokens.corrupted)
    patched = _last_logits(smol, tokens.corrupted, Patch("blocks.0.hook_resid_pre", clean_resid))
    assert (clean - corrupted).abs().max() > 1.0  # the patch has something to restore
    assert (patched - clean).abs().max() <= tol(smol.dtype)


def test_per_head_patch_touches_only_the_chosen_heads(smol, tokens):
    site = "blocks.6.attn.hook_z"
    plain = _capture(smol, tokens.corrupted, site)
    source = torch.randn_like(plain)
    with smol.intervene(Patch(site, source[1:2], [-2], heads=[3], rows=[1])):
        got = _capture(smol, tokens.corrupted, site)
    changed = (got != plain).any(-1)  # [batch, pos, head]
    assert changed[1, -2, 3] and changed.sum() == 1
    assert torch.equal(got[1, -2, 3], source[1, -2, 3])


@pytest.fixture(scope="module")
def runs(smol, tokens) -> P.Runs:
    sites = [Site(i, k) for i in (0, 4, 12, 29) for k in P.GRIDS.values()]
    return P.prepare(smol, tokens, sites)


@pytest.mark.parametrize("grid,position", [("resid", None), ("attn", None), ("mlp", None), ("heads", None),
                                           ("heads", -1)])
def test_batched_sweep_equals_one_location_per_forward(smol, runs, grid, position):
    layers = [0, 4, 12, 29] if grid != "heads" else [12, 29]
    locs = P.grid_locations(smol, grid, 5, layers, position)
    batched = P.sweep(smol, runs, locs, rows_per_forward=16)
    loop = P.sweep(smol, runs, locs, one_location_per_forward=True)
    assert batched.abs().max() > 0.01  # some location matters
    assert (batched - loop).abs().max() <= tol(smol.dtype)


def test_resid_at_the_last_position_of_the_last_layer_restores_most(smol, runs):
    grid = P.sweep(smol, runs, P.grid_locations(smol, "resid", 5, [0, 29])).view(2, 5)
    assert grid[1, -1] > 0.5 and grid[1, :-1].abs().max() < 0.1  # only the last position feeds the logits there


def test_attribution_tracks_exact_patching(smol, runs):
    locs = P.grid_locations(smol, "attn", 5, [0, 4, 12, 29]) + P.grid_locations(smol, "heads", 0, [4, 12])
    exact, estimate = P.sweep(smol, runs, locs), P.attribution(smol, runs, locs)
    assert P.pearson(exact, estimate) > 0.8


def test_path_patching_with_no_sender_changes_nothing(smol, tokens, runs):
    effect = P.path_patching(smol, tokens, [[], (4, 2), [(4, 2), (12, 0)]], [(20, 1), (25, 3)], via="q")
    assert effect[0].abs() <= tol(smol.dtype)
    assert effect[1:].abs().max() > 0  # a real sender does move the receivers' queries
    for via in ("k", "v"):
        assert P.path_patching(smol, tokens, [[]], [(20, 1)], via=via)[0].abs() <= tol(smol.dtype)


def test_bad_inputs_are_one_line_errors(smol, tokens, runs, tmp_path):
    uneven = TaskTokens([[1, 2, 3]], [[1, 2]], torch.tensor([5]), torch.tensor([6]))
    with pytest.raises(InterpError, match="same token length"):
        P.prepare(smol, uneven)
    with pytest.raises(InterpError, match="out of range"):
        P.grid_locations(smol, "resid", 3, layers=[smol.n_layers])
    with pytest.raises(InterpError, match="out of range"):
        P.path_patching(smol, tokens, [(2, smol.n_heads)], [(20, 1)])
    with pytest.raises(InterpError, match="below the deepest receiver"):
        P.path_patching(smol, tokens, [(25, 0)], [(20, 1)])
    with pytest.raises(InterpError, match="Patch heads"):
        Patch("blocks.1.attn.hook_z", torch.zeros(1, 3, smol.n_heads, smol.d_head), heads=[smol.n_heads]).hooks(smol)
    with pytest.raises(InterpError, match="negative"):
        Patch("blocks.1.hook_resid_pre", torch.zeros(1, 3, smol.d_model), positions=[2])


def test_cli_writes_grids_with_labels_and_refuses_unsolvable_tasks(smol, monkeypatch, tmp_path):
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": smol)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": i.clean, "corrupted": i.corrupted, "answer": i.answer,
                                           "wrong_answer": i.wrong}) for i in ITEMS))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["patch", "--model", "smollm2-135m-instruct", "--pairs", str(pairs), "--sites",
                                   "heads", "--head-position", "-1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "result.json").read_text())
    grid = summary["grids"]["heads"]
    assert len(grid["values"]) == smol.n_layers == len(grid["row_labels"])
    assert len(grid["values"][0]) == smol.n_heads == len(grid["column_labels"])
    assert (out / "report.html").exists() and "heads" in summary["attribution_correlation"]

    flipped = tmp_path / "flipped.jsonl"  # answer and wrong answer swapped: the model solves none
    flipped.write_text("\n".join(json.dumps({"clean": i.clean, "corrupted": i.corrupted, "answer": i.wrong,
                                             "wrong_answer": i.answer}) for i in ITEMS))
    bad_out = tmp_path / "bad"
    res = CliRunner().invoke(app, ["patch", "--model", "smollm2-135m-instruct", "--pairs", str(flipped), "--out",
                                   str(bad_out)])
    assert isinstance(res.exception, InterpError) and "solves 0 of 3" in str(res.exception)
    assert not bad_out.exists()
    res = CliRunner().invoke(app, ["patch", "--pairs", str(pairs), "--sites", "neurons", "--out", str(bad_out)])
    assert isinstance(res.exception, InterpError) and not bad_out.exists()
