"""Subspace / Direction algebra, persistence and error paths, and the direction estimators on planted data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from interp.core.subspace import Direction, Subspace
from interp.directions.estimators import DiffInMeans, PCADirections
from interp.errors import InterpError
from interp.io import write_json, write_tensors
from probes import ProbeDirection


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def model(smol):
    """SmolLM2-135M-Instruct, the session-wide instance from conftest."""
    return smol


# ----- construction and algebra -----
def test_orthonormalises_and_keeps_span_and_first_row():
    raw = rand(3, 50)
    s = Subspace(raw)
    assert s.basis.dtype == torch.float32 and (s.k, s.d) == (3, 50)
    assert torch.allclose(s.basis @ s.basis.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(s.project(raw), raw, atol=1e-4)  # same span: the raw rows lie inside it
    assert float(s.basis[0] @ raw[0] / raw[0].norm()) == pytest.approx(1.0, abs=1e-6)  # Gram-Schmidt order and sign
    again = Subspace(s.basis)  # already orthonormal: kept exactly
    assert torch.equal(again.basis, s.basis)


def test_projection_identities_any_leading_shape():
    s = Subspace(rand(4, 32))
    x = rand(2, 3, 5, 32, seed=1)
    p, a, c = s.project(x), s.ablate(x), s.coords(x)
    assert p.shape == x.shape and a.shape == x.shape and c.shape == (2, 3, 5, 4)
    assert torch.allclose(p + a, x, atol=1e-5)
    assert torch.allclose(s.project(p), p, atol=1e-5)  # idempotent
    assert s.coords(a).abs().max() < 1e-5  # nothing of the subspace is left after ablation
    assert torch.allclose(c @ s.basis, p, atol=1e-5)
    assert float((p * a).sum(-1).abs().max()) < 1e-3  # orthogonal pieces


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_projection_keeps_dtype(dtype):
    s = Subspace(rand(2, 16))
    x = rand(7, 16, seed=2).to(dtype)
    assert s.project(x).dtype == dtype and s.ablate(x).dtype == dtype and s.coords(x).dtype == dtype
    ref = s.project(x.double())
    tol = 1e-10 if dtype == torch.float64 else 5e-2
    assert torch.allclose(s.project(x).double(), ref, atol=tol)


def test_projection_on_wrong_width_is_clear():
    with pytest.raises(InterpError, match="width d=16"):
        Subspace(rand(2, 16)).project(rand(3, 15))


@pytest.mark.parametrize("bad, msg", [
    (torch.tensor([[1.0, float("nan")]]), "NaN"),
    (torch.tensor([[1.0, float("inf")]]), "NaN or inf"),
    (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "zero"),
    (torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]), "linearly dependent"),
    (torch.ones(4), "2-D"),
    (torch.ones(1, 2, 3), "2-D"),
    (torch.randn(3, 2), "at most 2"),
    (torch.zeros(0, 5), "empty"),
])
def test_constructor_rejects_bad_bases(bad, msg):
    with pytest.raises(InterpError, match=msg):
        Subspace(bad)


def test_principal_angles_match_scipy():
    a, b = Subspace(rand(3, 20, seed=3)), Subspace(rand(5, 20, seed=4))
    ours = a.principal_angles(b).numpy()
    ref = np.sort(scipy.linalg.subspace_angles(a.basis.double().numpy().T, b.basis.double().numpy().T))
    assert np.all(np.diff(ours) >= 0) and len(ours) == 3
    np.testing.assert_allclose(ours, ref, atol=1e-7)
    np.testing.assert_allclose(b.principal_angles(a).numpy(), ref, atol=1e-7)
    # small angles: a subspace tilted by 1e-6 rad, where arccos alone would lose them
    base = torch.linalg.qr(rand(20, 2, seed=5, dtype=torch.float64))[0].T
    perp = torch.linalg.qr(torch.cat([base.T, rand(20, 1, seed=6, dtype=torch.float64)], 1))[0][:, 2]
    tilted = base.clone()
    tilted[0] = np.cos(1e-6) * base[0] + np.sin(1e-6) * perp
    small = Subspace(base.float()).principal_angles(Subspace(tilted.float())).numpy()
    ref = np.sort(scipy.linalg.subspace_angles(Subspace(base.float()).basis.double().numpy().T,
                                               Subspace(tilted.float()).basis.double().numpy().T))
    np.testing.assert_allclose(small, ref, rtol=1e-6, atol=1e-12)
    assert small[1] == pytest.approx(1e-6, rel=0.2)  # float32 storage moves the rows by ~1e-8


def test_overlap_self_nested_orthogonal_and_random_baseline():
    s = Subspace(rand(4, 64, seed=7))
    assert s.overlap(s) == pytest.approx(1.0, abs=1e-6)
    assert Subspace(s.basis[:2]).overlap(s) == pytest.approx(1.0, abs=1e-6)  # nested
    assert Subspace(torch.eye(64)[:3]).overlap(Subspace(torch.eye(64)[3:6])) == pytest.approx(0.0, abs=1e-12)
    assert s.overlap(s) == pytest.approx(float((torch.cos(s.principal_angles(s)) ** 2).mean()), abs=1e-6)
    base = s.random_overlap(n=400, seed=0)
    assert base.expected == pytest.approx(4 / 64)
    assert base.mean == pytest.approx(base.expected, rel=0.1)  # E = k/d; standard error here is ~2%
    assert 0 < base.std < base.mean
    assert s.random_overlap(n=50, seed=1).mean != base.mean
    assert s.random_overlap(k=8, n=200).expected == pytest.approx(8 / 64)
    with pytest.raises(InterpError, match="width"):
        s.overlap(Subspace(rand(2, 32)))


def test_direction_from_vector_and_scale():
    v = torch.tensor([3.0, 4.0, 0.0])
    d = Direction.from_vector(v, {"layer": 2})
    assert isinstance(d, Subspace) and d.k == 1
    assert torch.allclose(d.vector, torch.tensor([0.6, 0.8, 0.0]))
    assert d.scale == pytest.approx(5.0) and d.provenance["layer"] == 2
    assert Direction.from_vector(v, scale=2.5).scale == 2.5
    with pytest.raises(InterpError, match="one vector"):
        Direction(torch.eye(3)[:2])
    with pytest.raises(InterpError, match="zero"):
        Direction.from_vector(torch.zeros(3))


def test_data_hash_is_stable_and_sensitive():
    x = rand(3, 4)
    h = Subspace.data_hash(x, ["a", "b"])
    assert len(h) == 16 and h == Subspace.data_hash(x.clone(), ["a", "b"])
    assert h != Subspace.data_hash(x + 1e-3, ["a", "b"]) and h != Subspace.data_hash(x, ["a", "c"])
    assert Subspace.data_hash(x.bfloat16()) != Subspace.data_hash(x)


# ----- persistence -----
def test_save_load_round_trip(tmp_path, model):
    prov = {"model": model.fingerprint, "site": "blocks.10.hook_resid_post", "layer": 10, "position": -1,
            "method": "diff_in_means", "data_hash": "abc", "extra": [1, 2]}
    d = Direction.from_vector(rand(576), prov)
    d.save(tmp_path / "dir")
    back = Subspace.load(tmp_path / "dir", model=model)
    assert type(back) is Direction and torch.equal(back.basis, d.basis)
    assert back.provenance == d.provenance and back.scale == d.scale
    s = Subspace(rand(3, 576), prov)
    s.save(tmp_path / "sub")
    back = Subspace.load(tmp_path / "sub")
    assert type(back) is Subspace and torch.equal(back.basis, s.basis) and back.provenance == prov
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_load_errors(tmp_path, model):
    good = tmp_path / "good"
    Direction.from_vector(rand(576), {"model": model.fingerprint, "layer": 3}).save(good)

    def copy(name):
        dst = tmp_path / name
        dst.mkdir()
        for f in good.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
        return dst

    with pytest.raises(InterpError, match="does not exist"):
        Subspace.load(tmp_path / "nope")
    d = copy("no_tensors"); (d / "subspace.safetensors").unlink()
    with pytest.raises(InterpError, match="missing tensor file"):
        Subspace.load(d)
    d = copy("text"); (d / "subspace.safetensors").write_text("this is a text file, not tensors\n" * 3)
    with pytest.raises(InterpError, match="not a readable safetensors"):
        Subspace.load(d)
    d = copy("short"); (d / "subspace.safetensors").write_bytes(b"abc")
    with pytest.raises(InterpError, match="too short"):
        Subspace.load(d)
    d = copy("no_json"); (d / "subspace.json").unlink()
    with pytest.raises(InterpError, match="missing JSON"):
        Subspace.load(d)
    d = copy("bad_json"); (d / "subspace.json").write_text('{"format": "interp.sub')
    with pytest.raises(InterpError, match="not valid JSON"):
        Subspace.load(d)
    d = copy("not_ours"); (d / "subspace.json").write_text('{"hello": 1}')
    with pytest.raises(InterpError, match="not an interp subspace"):
        Subspace.load(d)
    d = copy("shape"); meta = json.loads((d / "subspace.json").read_text()); meta["d"] = 575
    write_json(d / "subspace.json", meta)
    with pytest.raises(InterpError, match=r"shape \(1, 576\).*\[1, 575\]"):
        Subspace.load(d)
    d = copy("nan"); bad = torch.full((1, 576), float("nan"))
    write_tensors(d / "subspace.safetensors", {"basis": bad})
    with pytest.raises(InterpError, match="NaN"):
        Subspace.load(d)
    d = copy("other_key"); write_tensors(d / "subspace.safetensors", {"w": torch.ones(1, 576)})
    with pytest.raises(InterpError, match="no 'basis'"):
        Subspace.load(d)
    # another model: same width, other name; other width; layer out of range
    Direction.from_vector(rand(576), {"model": {**model.fingerprint, "name": "other-model"}}).save(tmp_path / "other")
    assert Subspace.load(tmp_path / "other").k == 1  # fine without a model
    with pytest.raises(InterpError, match="another model"):
        Subspace.load(tmp_path / "other", model=model)
    Direction.from_vector(rand(896)).save(tmp_path / "wide")
    with pytest.raises(InterpError, match="direction of width 896, model has d_model 576"):
        Subspace.load(tmp_path / "wide", model=model)
    Direction.from_vector(rand(576), {"layer": 30}).save(tmp_path / "layer")
    with pytest.raises(InterpError, match="out of range"):
        Subspace.load(tmp_path / "layer", model=model)


def test_check_for_real_model(model):
    Subspace(rand(2, model.d_model), {"model": model.fingerprint, "layer": [0, 29]}).check_for(model)
    with pytest.raises(InterpError, match="subspace \\(k=2\\) of width 64"):
        Subspace(rand(2, 64)).check_for(model)


# ----- estimators on planted data -----
def planted(n=2000, d=16, shift=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    v = v / v.norm()
    y = torch.arange(n) % 2
    return torch.randn(n, d, generator=g) + shift * y[:, None] * v, y, v


def test_estimators_recover_planted_direction():
    X, y, v = planted()
    for est in (DiffInMeans(), PCADirections(), ProbeDirection()):
        est.fit(X, y.tolist() if isinstance(est, PCADirections) else y.bool())
        d = est.subspace_ if isinstance(est, PCADirections) else est.direction_
        assert isinstance(d, Direction)
        assert float(d.vector @ v) > 0.99, type(est).__name__  # recovered, and pointing from class 0 to class 1
        assert d.scale == pytest.approx(4.0, rel=0.05)
        assert d.provenance["n_positive"] == 1000 and len(d.provenance["data_hash"]) == 16


def test_diff_in_means_values_and_provenance_extras():
    X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [3.0, 5.0]])
    est = DiffInMeans(provenance={"layer": 4, "site": "blocks.4.hook_resid_post"}).fit(X, [0, 0, 1, 1])
    assert torch.allclose(est.means_, torch.tensor([[1.0, 0.0], [2.0, 4.0]]))
    assert torch.allclose(est.mean_diff_, torch.tensor([1.0, 4.0]))
    assert est.direction_.scale == pytest.approx(17**0.5)
    assert est.direction_.provenance["layer"] == 4 and est.direction_.provenance["method"] == "diff_in_means"
    assert torch.allclose(DiffInMeans(normalize=False).fit(X, [0, 0, 1, 1]).directions_, est.mean_diff_)


def test_batched_diff_in_means_equals_loop():
    X, y = rand(40, 3, 5, 8), torch.arange(40) % 3 == 0
    est = DiffInMeans().fit(X, y)
    assert est.directions_.shape == (3, 5, 8) and not hasattr(est, "direction_")
    for i in range(3):
        for j in range(5):
            one = DiffInMeans().fit(X[:, i, j], y)
            assert torch.allclose(est.directions_[i, j], one.direction_.vector, atol=1e-6)
            assert torch.allclose(est.direction_at(i, j).vector, one.direction_.vector, atol=1e-6)
    assert est.direction_at(1, 2, layer=2).provenance["index"] == [1, 2]
    with pytest.raises(InterpError, match="give 2 indices"):
        est.direction_at(1)


def test_pca_recovers_planted_plane_paired():
    g = torch.Generator().manual_seed(1)
    d, n = 32, 300
    plane = torch.linalg.qr(torch.randn(d, 2, generator=g))[0].T
    coef = torch.randn(n, 2, generator=g) * torch.tensor([3.0, 1.5]) + torch.tensor([2.0, 0.0])
    neg = torch.randn(n, d, generator=g)
    pos = neg + coef @ plane + 0.05 * torch.randn(n, d, generator=g)
    X, y = torch.cat([pos, neg]), torch.cat([torch.ones(n), torch.zeros(n)])
    est = PCADirections(k=2, paired=True, provenance={"layer": 1}).fit(X, y)
    sub = est.subspace_
    assert type(sub) is Subspace and sub.k == 2 and sub.provenance["method"] == "pca_paired"
    assert sub.overlap(Subspace(plane)) > 0.99
    assert float(est.components_[0] @ est.mean_diff_) > 0 and float(est.components_[1] @ est.mean_diff_) >= 0
    evr = est.explained_variance_ratio_
    assert evr[0] >= evr[1] and float(evr.sum()) > 0.95
    with pytest.raises(InterpError, match="as many positive as negative"):
        PCADirections(paired=True).fit(X[1:], y[1:])
    with pytest.raises(InterpError, match="at most"):
        PCADirections(k=40).fit(X, y)


@pytest.mark.parametrize("X, y, msg", [
    (torch.zeros(0, 4), [], "empty"),
    (torch.ones(3, 4), [1, 1, 1], "only one class"),
    (torch.ones(3, 4), [0, 1], "2 labels for 3"),
    (torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]), [0, 1], "NaN"),
    (torch.ones(2, 4), [0, 2], "bool or 0/1"),
    (torch.ones(4), [0, 1, 0, 1], r"\[n, \.\.\., d\]"),
    (torch.ones(2, 4), ["a", "b"], "0/1 or bool"),
])
def test_estimators_reject_bad_input(X, y, msg):
    for est in (DiffInMeans(), PCADirections(), ProbeDirection()):
        with pytest.raises(InterpError, match=msg):
            est.fit(X, y)
