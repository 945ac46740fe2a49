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
    _check_new_measurements(data)


# Per new measurement: its methods (each timed against the measurement's baseline, the first name after the
# key), the methods that compute the baseline's numbers, and the fp32 tolerance of that check.
NEW_MEASUREMENTS = {
    "patching": ("one_location_per_forward", ["batched"], 1e-4),
    "probes": ("sklearn_loop", ["batched"], 1e-2),  # two solvers stopped by the same gradient tolerance
    "das": ("full_forward", ["das"], 1e-4),
    "likelihoods": ("one_per_forward", ["prefix_cache", "no_prefix_cache"], 1e-3),
}
OTHER_FRAMEWORKS = {"capture": ["tl_run_with_cache", "nnsight_trace"], "generation": ["tl_steered", "nnsight_steered"]}


def _check_new_measurements(data: dict) -> None:
    """Every measurement the issue asks for is present, timed (positive medians, one per round), checked against
    its baseline in fp32, and TransformerLens and nnsight are measured where installed (else a reason is given)."""
    from importlib.util import find_spec

    sizes = gpu.TINY_SIZES
    for key in gpu.MEASUREMENTS:
        assert "error" not in data[key], data[key].get("traceback")
        assert _positive(data[key]["seconds"])
    for key, (baseline, same, tol) in NEW_MEASUREMENTS.items():
        row = data[key]
        runs = sizes.runs if key == "probes" else sizes.loop_runs
        for name in [baseline, *same]:
            assert _positive(row[f"{name}_s"]) and len(row["times_s"][name]) == runs, (key, name)
            assert name in row["peak_memory_gib"] and row["peak_memory_gib"][name] is None  # None on the CPU
        for name in same:
            assert _positive(row[f"{name}_ratio"]) and row["max_abs_diff_by_method"][name] <= tol, (key, name, row)
        assert row["max_abs_diff"] <= tol and _positive(row["speedup"]), (key, row)
    assert data["patching"]["prompt_tokens"] == sizes.prompt_tokens, "the task prompts were lengthened"
    assert data["das"]["steps"] > 0 and _positive(data["das"]["das_s_per_step"])
    assert data["das"]["not_measured"]["several_sites_together"], "no batched multi-site DAS: the reason is recorded"
    assert _positive(data["probes"]["sklearn_all_heads_s"]) and data["probes"]["max_prediction_disagreement"] <= 0.1
    assert data["likelihoods"]["continuations"] > data["likelihoods"]["questions"]
    assert data["scoring"]["prompt_tokens"] >= sizes.prompt_tokens

    cap, gen = data["capture"], data["generation"]
    assert set(cap["max_abs_diff_by_method"]) >= {"capture_prefix_cache", "capture_no_prefix_cache", "capture_all_tokens"}
    assert gen["steered_ratio"] == gen["steered_s"] / gen["plain_s"]
    installed = {"tl": find_spec("transformer_lens") is not None, "nnsight": find_spec("nnsight") is not None}
    for key, names in OTHER_FRAMEWORKS.items():
        row = data[key]
        assert row["max_abs_diff"] < 1e-4, f"{key}: every method must give our values (fp32): {row['max_abs_diff_by_method']}"
        for name in names:
            if installed[name.split("_")[0]]:
                assert _positive(row[f"{name}_s"]) and _positive(row[f"{name}_ratio"]), (key, name)
                assert len(row["times_s"][name]) == sizes.runs and name in row["max_abs_diff_by_method"]
            else:
                assert row["not_measured"][name], f"{key}: {name} was neither measured nor given a reason"
    for name in OTHER_FRAMEWORKS["generation"]:
        if name in gen["tokens_agree"]:
            assert gen["tokens_agree"][name] == 1.0, (name, gen["tokens_agree"])


def test_gpu_benchmark_model_has_the_shape_of_qwen25_1_5b():
    """The GPU run's random model is Qwen2.5-1.5B's architecture: its published parameter counts (1.54B in all,
    1.31B without the tied embedding), built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(gpu.make_config(gpu.QWEN25_1_5B))
    n = sum(p.numel() for p in hf.parameters())
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert round(n / 1e9, 2) == 1.54 and round((n - hf.get_input_embeddings().weight.numel()) / 1e9, 2) == 1.31


def test_gpu_benchmark_7b_shape_has_the_parameters_of_qwen25_7b():
    """The --shape 7b model is Qwen2.5-7B's architecture: its published parameter counts (7.62B in all, 6.53B
    without the embedding and the untied unembedding), built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(gpu.make_config(gpu.QWEN25_7B))
    n = sum(p.numel() for p in hf.parameters())
    embeddings = hf.get_input_embeddings().weight.numel() + hf.get_output_embeddings().weight.numel()
    assert type(hf).__name__ == "Qwen2ForCausalLM" and not hf.config.tie_word_embeddings
    assert round(n / 1e9, 2) == 7.62 and round((n - embeddings) / 1e9, 2) == 6.53
    assert (hf.config.num_attention_heads, hf.config.num_key_value_heads, hf.config.hidden_size) == (28, 4, 3584)


def test_gpu_benchmark_records_why_a_missing_backend_is_not_measured(monkeypatch):
    """Without transformer-lens and nnsight, capture and generation measure our own methods and record, for each
    framework's method, why it was not measured, instead of failing."""
    import importlib.util

    from interp.data.registry import is_prepared

    if not is_prepared(gpu.TOKENIZER_MODEL):
        pytest.skip(f"the tiny model uses the tokenizer of {gpu.TOKENIZER_MODEL}, which is not prepared here")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **kw: None if name in ("transformer_lens", "nnsight") else real(name, *a, **kw))
    model = gpu.build_model("random-tiny-qwen2", gpu.TINY, gpu.default_tokenizer_dir(), torch.float32, torch.device("cpu"))
    others = gpu.Others(model)
    for name in ("transformer_lens", "nnsight"):
        backend, reason = others.get(name)
        assert backend is None and "not installed" in reason
    cap = gpu.measure_capture(model, gpu.TINY_SIZES, others)
    gen = gpu.measure_generation(model, gpu.TINY_SIZES, others)
    assert set(cap["not_measured"]) == {"tl_run_with_cache", "nnsight_trace"} and "tl_run_with_cache_s" not in cap
    assert set(gen["not_measured"]) == {"tl_steered", "nnsight_steered"} and "nnsight_steered_s" not in gen
    assert _positive(cap["capture_s"]) and cap["max_abs_diff"] < 1e-4 and _positive(gen["steered_ratio"])
    assert gen["max_abs_diff_by_method"] == {} and gen["tokens_agree"] == {}
