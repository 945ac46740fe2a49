"""Benchmarks: every result file says where it came from, and the GPU benchmark runs (tiny, on the CPU) end to end."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from datetime import datetime

import pytest
import torch

from benchmarks import gpu
from benchmarks.common import RESULTS, ROOT, git_state, provenance, write_result

PROVENANCE = ("git_commit", "git_dirty", "command", "machine", "versions", "date")


def _check_provenance(prov: dict, module: str) -> None:
    assert set(PROVENANCE) <= set(prov), f"provenance lacks {set(PROVENANCE) - set(prov)}"
    assert f"-m {module}" in prov["command"]
    machine = prov["machine"]
    assert machine["cpu"] and machine["torch_threads"] >= 1 and machine["device"] in ("cpu", "cuda")
    if machine["device"] == "cuda":
        assert machine["gpu"], "a GPU run must name its GPU"
    assert prov["versions"]["torch"] and prov["versions"]["transformers"] and prov["versions"]["python"]
    assert datetime.fromisoformat(prov["date"]).utcoffset() is not None, "the date must carry its time zone (UTC)"


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_provenance_names_the_commit_command_machine_and_versions(tmp_path):
    prov = provenance("benchmarks.x", ["--out", "a b.json", "--runs", "5"], "cpu")
    _check_provenance(prov, "benchmarks.x")
    assert prov["command"] == "python -m benchmarks.x --out 'a b.json' --runs 5"  # a shell line, quoted
    assert prov["machine"]["torch_threads"] == torch.get_num_threads()
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert prov["git_commit"] == head and isinstance(prov["git_dirty"], bool)

    written = write_result(tmp_path / "r.json", {"x_s": 1.0}, prov)
    assert json.loads((tmp_path / "r.json").read_text()) == written
    assert next(iter(written)) == "git_commit"


def test_provenance_without_git_takes_the_commit_from_the_environment(tmp_path, monkeypatch):
    """A tree copied to a lent machine has no .git: the commit given in BENCH_GIT_COMMIT is recorded instead."""
    monkeypatch.setenv("BENCH_GIT_COMMIT", "0123abcd")
    state = git_state(tmp_path)  # not a git repository
    assert state == {"git_commit": "0123abcd", "git_dirty": None, "git_source": "BENCH_GIT_COMMIT"}
    monkeypatch.delenv("BENCH_GIT_COMMIT")
    assert git_state(tmp_path)["git_commit"] is None


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_result_file_was_written_by_committed_code(path):
    """No hand-made figures: each results JSON carries the provenance a benchmark script writes, from a clean
    tree at a commit of this repository's history."""
    data = json.loads(path.read_text())
    assert {"git_commit", "command"} <= set(data), f"{path.name} has no provenance: regenerate it with `make bench`"
    prov = data
    _check_provenance(prov, "benchmarks.")
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"] or ""), f"{path.name}: no commit recorded"
    assert prov["git_dirty"] is not True, f"{path.name} was written with uncommitted code changes"
    if shutil.which("git") and (ROOT / ".git").exists():
        known = subprocess.run(["git", "merge-base", "--is-ancestor", prov["git_commit"], "HEAD"], cwd=ROOT)
        shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip() == "true"
        assert known.returncode == 0 or shallow, f"{path.name}: commit {prov['git_commit'][:12]} is not in HEAD's history"


def test_gpu_benchmark_runs_tiny_on_the_cpu_and_writes_every_measurement(tmp_path):
    from interp.data.registry import is_prepared

    if not is_prepared(gpu.TOKENIZER_MODEL):  # e.g. a lent GPU machine with only a stand-in SmolLM2
        pytest.skip(f"the tiny model uses the tokenizer of {gpu.TOKENIZER_MODEL}, which is not prepared here")
    out = tmp_path / "gpu_tiny.json"
    gpu.main(["--tiny", "--device", "cpu", "--out", str(out)])  # on the CPU even where a GPU is present
    data = json.loads(out.read_text())
    _check_provenance(data, "benchmarks.gpu")
    assert "--tiny" in data["command"]
    assert data["machine"]["device"] == "cpu"
    assert data["model"]["config"]["num_hidden_layers"] == 2 and data["model"]["dtype"] == "float32"

    cap = data["capture"]
    for name in ("bare", "body", "capture", "capture_prefix_cache", "capture_no_prefix_cache", "capture_all_tokens"):
        assert _positive(cap[f"{name}_s"]) and len(cap["times_s"][name]) == gpu.TINY_SIZES.runs
        if name != "bare":
            assert _positive(cap[f"{name}_ratio"])

    gen = data["generation"]
    assert _positive(gen["plain_generate_s"]) and _positive(gen["steered_generate_s"]) and _positive(gen["steered_ratio"])

    sc = data["scoring"]
    assert _positive(sc["batched_s"]) and _positive(sc["one_at_a_time_s"]) and _positive(sc["speedup"])
    assert sc["max_abs_diff"] < 1e-4, "batched and one-at-a-time scoring must give the same numbers (fp32)"

    att = data["attack"]
    assert sorted(att["by_n"], key=int) == ["1", "4", "16"]
    for row in att["by_n"].values():
        for key in ("together_s_per_behaviour_step", "one_at_a_time_s_per_behaviour_step", "ratio"):
            assert _positive(row[key]), (key, row)
    assert _positive(data["total_seconds"])


def test_gpu_benchmark_model_has_the_shape_of_qwen25_1_5b():
    """The GPU run's random model is Qwen2.5-1.5B's architecture: its published parameter counts (1.54B in all,
    1.31B without the tied embedding), built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(gpu.make_config(gpu.QWEN25_1_5B))
    n = sum(p.numel() for p in hf.parameters())
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert round(n / 1e9, 2) == 1.54 and round((n - hf.get_input_embeddings().weight.numel()) / 1e9, 2) == 1.31
