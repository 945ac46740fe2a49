"""Subspace patching, DAS and the interpretability-illusion diagnostics: SubspacePatch on SmolLM2, the toy networks
where the truth is known, DAS's guarantees (orthonormal basis, frozen model, no hook left), bad inputs, the CLI
and the notebook. The reference's data (disjoint test items, both kinds of pair, user pairs) and the residual
stream's readers: tests/test_das_faithful.py."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from analyses import subspaces
from interp.circuits import das, illusion
from interp.circuits import patching as P
from interp.circuits.tasks import TaskItem, TaskSet, make_task
from interp.circuits.toy import faithful_toy, illusion_toy, toy_interchange
from interp.cli import app
from interp.core.hooks import hooked
from interp.core.interventions import Patch, SubspacePatch
from interp.core.sites import Site
from interp.core.subspace import Subspace
from interp.errors import InterpError
from tests.conftest import registered_hooks, tol
from tests.test_notebooks import PLOTLY, execute, shown

TASK = make_task("ioi", 8, seed=0, corrupt="swap")
RESID = "blocks.22.hook_resid_post"  # where the S-inhibition signal has reached the last position on SmolLM2


def _orthonormal(k: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def _last_logits(model, ids, *interventions) -> torch.Tensor:
    with torch.no_grad(), model.intervene(*interventions):
        return model.hf(**model.pad(ids).inputs(), use_cache=False).logits[:, -1].float()


def _capture(model, ids, site: str, *interventions) -> torch.Tensor:
    got = {}
    with torch.no_grad(), model.intervene(*interventions), \
            hooked(model, {model.sites(site)[0]: [lambda s, x: got.__setitem__(s, x.detach().clone())]}):
        model.hf(**model.pad(ids).inputs(), use_cache=False)
    return next(iter(got.values()))


@pytest.fixture(scope="module")
def tokens(smol):
    return TASK.tokens(smol)


# ----- SubspacePatch -----

@pytest.mark.parametrize("site,heads", [("blocks.3.hook_resid_pre", None), ("blocks.5.mlp.hook_post", None),
                                        ("blocks.7.attn.hook_z", [1, 4])])
def test_full_basis_equals_patch_and_empty_basis_changes_nothing(smol, tokens, site, heads):
    source = _capture(smol, tokens.clean, site)
    d = source.shape[-1]
    plain = _last_logits(smol, tokens.corrupted)
    patched = _last_logits(smol, tokens.corrupted, Patch(site, source, [-3, -1], heads=heads))
    full = _last_logits(smol, tokens.corrupted, SubspacePatch(site, torch.eye(d), source, [-3, -1], heads=heads))
    empty = _last_logits(smol, tokens.corrupted, SubspacePatch(site, torch.zeros(0, d), source, [-3, -1], heads=heads))
    assert (patched - plain).abs().max() > 1e-3  # the patch does something
    assert (full - patched).abs().max() <= tol(smol.dtype)
    assert torch.equal(empty, plain)


@pytest.mark.parametrize("site,heads", [("blocks.5.mlp.hook_post", None), ("blocks.3.hook_resid_pre", None),
                                        ("blocks.7.attn.hook_z", [2])])
def test_subspace_patch_changes_only_the_subspace_component(smol, tokens, site, heads):
    """On the patched rows and positions the subspace coordinates become the source's, and nothing orthogonal to the
    subspace moves (<= 1e-5); other rows and positions (and heads) are untouched."""
    source = _capture(smol, tokens.clean, site)
    plain = _capture(smol, tokens.corrupted, site)
    basis = _orthonormal(3, source.shape[-1])
    patch = SubspacePatch(site, basis, source[[1, 4]], [-2, -1], heads=heads, rows=[1, 4])
    got = _capture(smol, tokens.corrupted, site, patch)
    delta = (got - plain).double()
    b = basis.double()
    outside = delta - (delta @ b.T) @ b
    assert outside.abs().max() <= 1e-5
    h = slice(None) if heads is None else heads
    coords = got[[1, 4]][:, -2:][:, :, h].double() @ b.T
    assert (coords - source[[1, 4]][:, -2:][:, :, h].double() @ b.T).abs().max() <= 1e-4
    assert (delta[[1, 4]][:, -2:].abs().amax(-1) > 0).any()  # it moved something
    changed = delta.abs().amax(-1) > 0  # [batch, pos] (or [batch, pos, head])
    expected = torch.zeros_like(changed)
    if heads is None:
        expected[[1, 4], -2:] = changed[[1, 4], -2:]
    else:
        expected[[1, 4], -2:, heads[0]] = changed[[1, 4], -2:, heads[0]]
    assert torch.equal(changed, expected)


def test_subspace_patch_refuses_a_subspace_from_another_model_or_site(smol, tokens):
    source = _capture(smol, tokens.clean, "blocks.3.hook_resid_pre")
    basis = _orthonormal(2, smol.d_model)
    bad = {"another model": Subspace(basis, {"model": {**smol.fingerprint, "name": "qwen"}}),
           "fitted at blocks.4": Subspace(basis, {"model": smol.fingerprint, "site": "blocks.4.hook_resid_pre"})}
    for what, sub in bad.items():
        with pytest.raises(InterpError) as e:
            SubspacePatch("blocks.3.hook_resid_pre", sub, source).hooks(smol)
        assert "\n" not in str(e.value) and ("another model" in str(e.value) or "blocks.4" in str(e.value)), what
    with pytest.raises(InterpError, match="cannot be patched at blocks.3.mlp.hook_post"):
        SubspacePatch("blocks.3.mlp.hook_post", Subspace(basis), source).hooks(smol)
    with pytest.raises(InterpError, match="not orthonormal"):
        SubspacePatch("blocks.3.hook_resid_pre", 2 * basis, source).hooks(smol)
    ok = Subspace(basis, {"model": smol.fingerprint, "site": "blocks.3.hook_resid_pre"})
    assert SubspacePatch("blocks.3.hook_resid_pre", ok, source).hooks(smol)


# ----- the toy networks -----

def test_toy_illusion_is_flagged_and_the_faithful_toy_is_not():
    """The Must-show numbers: DAS's direction on the illusion toy has > 90% of its patched variance in the reader's
    kernel and restores > 0.5 while patching the whole hidden layer restores ~0; the faithful toy's is consistent."""
    bad = subspaces.run_toy("illusion")
    d = bad.diagnoses["das"]
    assert d.null_variance_share > 0.9 and d.effect["whole"] > 0.5 and abs(bad.recoveries["full"]) < 0.05
    assert d.effect["rowspace"] < 0.1 and d.effect["nullspace"] == 0.0
    assert d.verdict == "possible illusion" and len(d.reasons) == 2
    good = subspaces.run_toy("faithful")
    d = good.diagnoses["das"]
    assert d.verdict == "consistent" and not d.reasons
    assert d.effect["whole"] > 0.5 and good.recoveries["full"] > 0.9 and d.null_variance_share < 0.1
    assert set(good.figures()) == {"training", "recoveries", "split", "effects"}


def test_the_illusory_direction_itself_is_flagged():
    """Without DAS: patching along (h0 + h1)/sqrt2 moves the illusion toy's output through the dormant h1 and is
    flagged; in the faithful toy the feature direction h0 is consistent; the disconnected h0 alone does nothing."""
    toy = illusion_toy()
    problem = toy_interchange(toy, 32)
    items = list(range(32))
    d = illusion.diagnose(problem, toy.direction(0, 1)[None], toy.W_out, items)
    assert abs(d.null_norm_share - 0.5) < 1e-6 and d.null_variance_share == 1.0 and d.var_row == 0.0
    assert d.effect["whole"] > 0.9 and d.effect["full"] == 0.0 and d.illusion
    assert abs(problem.recovery(items, toy.direction(0)[None])) < 1e-6
    faithful = faithful_toy()
    ok = illusion.diagnose(toy_interchange(faithful, 32), faithful.direction(0)[None], faithful.W_out, items)
    assert ok.verdict == "consistent" and ok.effect["whole"] > 0.9 and ok.null_norm_share == 0.0


def test_das_on_the_toys_finds_the_right_subspace():
    for toy, truth in ((illusion_toy(), (0, 1)), (faithful_toy(), (0,))):
        problem = toy_interchange(toy, 64, seed=1)
        problem.batch_size = 8
        fit = das.train(problem, 1, seed=1, epochs=100, lr=0.1, patience=15, progress=False)
        assert fit.subspace.overlap(Subspace(toy.direction(*truth)[None])) > 0.9, toy.name
        assert fit.ortho_error < 1e-5


def test_das_keeps_a_k_by_d_orthonormal_basis_and_is_seeded():
    problem = toy_interchange(illusion_toy(), 32)
    fit = das.train(problem, 3, epochs=5, progress=False)
    assert fit.subspace.k == 3 and fit.ortho_error < 1e-5 and fit.steps == 5
    again = das.train(problem, 3, epochs=5, progress=False)
    assert torch.equal(again.subspace.basis, fit.subspace.basis)
    assert not torch.equal(das.train(problem, 3, epochs=5, seed=1, progress=False).subspace.basis, fit.subspace.basis)
    holder = das._Basis(4864, 2, torch.Generator().manual_seed(0))
    state = [*holder.parameters(), *holder.buffers()]
    assert sum(t.numel() for t in state) == 4864 * 2  # never a d x d rotation, nor a d x d base matrix


# ----- DAS on a real model -----

def _weights_fingerprint(model) -> list[tuple[float, float, bool]]:
    return [(float(p.double().sum()), float((p.double() ** 2).sum()), p.requires_grad) for p in model.hf.parameters()]


def test_das_on_smol_leaves_the_model_as_it_was(smol, tmp_path):
    before = _weights_fingerprint(smol)
    fit = das.fit(smol, TASK, "blocks.20.mlp.hook_post", k=2, epochs=2, lr=0.05, progress=False)
    assert _weights_fingerprint(smol) == before
    assert all(p.grad is None for p in smol.hf.parameters()) and registered_hooks(smol) == 0
    assert fit.steps == 2 and fit.ortho_error < 1e-5 and fit.subspace.d == 1536
    assert fit.subspace.provenance["site"] == "blocks.20.mlp.hook_post" and fit.subspace.provenance["k"] == 2
    loaded = Subspace.load(fit.subspace.save(tmp_path / "mlp"), model=smol)  # an MLP-wide subspace loads for its model
    assert torch.equal(loaded.basis, fit.subspace.basis)
    assert SubspacePatch("blocks.20.mlp.hook_post", loaded, torch.zeros(1, 1, 1536), [-1]).hooks(smol)


def test_interchange_full_patch_agrees_with_the_patching_sweep(smol, tokens):
    """The interchange's fast path (from the site's layer, the last token only, the corrupted keys and values) gives
    the sweep's number for the same patch, and the full basis through SubspacePatch gives plain patching's."""
    problem = das.interchange(smol, tokens, RESID, [-1])
    runs = P.prepare(smol, tokens, [Site(23, "hook_resid_pre")])
    swept = P.sweep(smol, runs, [P.Location(Site(23, "hook_resid_pre"), -1)])
    items = list(range(len(tokens)))
    assert abs(problem.recovery(items, None) - float(swept[0])) <= 1e-4
    assert abs(problem.recovery(items, torch.eye(smol.d_model)) - problem.recovery(items, None)) <= 1e-4
    assert problem.recovery(items, None) > 0.3  # the signal is there to be found


def test_bad_inputs_are_one_line_errors(smol):
    uneven = TaskSet("uneven", [TaskItem("When Mary and John went to the store, John gave a drink to",
                                         "When Mary and John went to the big old store, Mary gave a drink to",
                                         " Mary", " John")] * 3)
    problem = toy_interchange(illusion_toy(), 8)
    cases = [(lambda: das.fit(smol, TASK, RESID, k=smol.d_model + 1), "choose k in 1..576"),
             (lambda: das.train(problem, 7), "choose k in 1..6"),
             (lambda: das.fit(smol, uneven, RESID), "same token length"),
             (lambda: das.fit(smol, TASK, "blocks.3.attn.hook_z"), "DAS trains at"),
             (lambda: das.fit(smol, TASK, RESID, positions=[0]), "negative"),
             (lambda: das.split_items(2), "at least 3 items"),
             (lambda: das.split_parts(["train", "test"]), "at least 2 items of the training part"),
             (lambda: das.split_parts(["train", "train", "dev"]), "must be 'train' or 'test'")]
    for call, message in cases:
        with pytest.raises(InterpError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


def test_cli_das_writes_the_subspace_and_the_result(smol, monkeypatch, tmp_path):
    """The default: the position pairs of both kinds, the test items from the test vocabulary, the residual
    stream decomposed against the reader heads named."""
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": smol)
    out = tmp_path / "das"
    res = CliRunner().invoke(app, ["das", "--model", "smollm2-135m-instruct", "--task", "ioi", "--site", RESID,
                                   "--k", "2", "--n", "24", "--epochs", "2", "--reader", "23.1", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "test recovery" in res.output and "whole component" in res.output and "disjoint split" in res.output
    sub = Subspace.load(out, model=smol)
    assert sub.k == 2 and sub.provenance["site"] == RESID and sub.provenance["method"] == "das"
    assert sub.provenance["split"] == "disjoint"
    summary = json.loads((out / "result.json").read_text())
    assert set(summary["recovery"]) == {"das", "full", "diff_in_means", "probe", "random"}
    assert set(summary["verdicts"]) == {"das", "diff_in_means", "probe", "random"}
    assert summary["options"]["task"]["corrupt"] == "position" and summary["readers"]["heads"] == ["23.1"]
    assert summary["pair_kinds"]["test"]["kept"] == 0 and summary["pair_kinds"]["train"]["kept"] > 0
    assert (out / "report.html").stat().st_size > 10_000
    old = CliRunner().invoke(app, ["das", "--site", RESID, "--n", "8", "--epochs", "1", "--corrupt", "swap",
                                   "--split", "random", "--out", str(tmp_path / "old")])
    assert old.exit_code == 0, old.output + repr(old.exception)
    assert "departure: test items from the training distribution" in old.output
    bad = CliRunner().invoke(app, ["das", "--site", RESID, "--k", "0", "--n", "8", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and isinstance(bad.exception, InterpError)


def test_subspaces_notebook():
    nb = execute("subspaces.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct", "INTERP_NOTEBOOK_N": "12",
                                     "INTERP_NOTEBOOK_EPOCHS": "3"})
    for figure in ("toy.figure('recoveries')", "toy.figure('effects')", "result.figure('recoveries')"):
        assert PLOTLY in shown(nb, figure), figure
    assert "possible illusion" in shown(nb, "toy")["text/html"]
