"""What every benchmark shares: provenance, timing in rotating rounds (on a GPU also by CUDA events, with peak
memory: `measured_rounds`), the steered-generation measurement, and the JSON writer.

Every result file starts with these provenance fields, at its top level, so that a figure can be traced to the
code and the machine that produced it and regenerated with the same command:

    git_commit, git_dirty   the commit of the working tree (git_dirty: uncommitted changes were present). Where
                            BENCH_GIT_COMMIT is set (a copied tree on a lent machine, whose .git may be stale), it wins.
    command                 the exact command line (`python -m benchmarks.x ...`)
    machine                 CPU model (/proc/cpuinfo), cores, torch threads; GPU name and CUDA version if used
    versions                python, torch, transformers
    date                    UTC, ISO 8601

Results are written atomically (`interp.io.write_json`): a killed run leaves the old file or none.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "INTERP_CACHE")


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit of `root` and whether its tracked files differ from it; BENCH_GIT_COMMIT, where set, wins."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if os.environ.get("BENCH_GIT_COMMIT"):  # a copied tree (a lent machine): its .git, if any, may be stale
        return {"git_commit": os.environ["BENCH_GIT_COMMIT"], "git_dirty": None, "git_source": "BENCH_GIT_COMMIT"}
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": os.environ.get("BENCH_GIT_COMMIT"), "git_dirty": None,
                "git_source": "BENCH_GIT_COMMIT" if os.environ.get("BENCH_GIT_COMMIT") else "unknown"}
    # results files are left out: `make bench` rewrites them one after the other, which is not a code change
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None, "git_source": "git"}


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command as a shell line: the real one when run from a shell, else `python -m module argv...`."""
    if argv is None:
        return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, "-m", module, *sys.argv[1:]])
    return shlex.join(["python", "-m", module, *argv])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str) -> dict[str, Any]:
    """Where the timings were taken: CPU model, cores and torch threads, plus the GPU when one was used."""
    device = torch.device(device)
    out: dict[str, Any] = {"device": device.type, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    if env:
        out["env"] = env
    return out


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def provenance(module: str, argv: Sequence[str] | None, device: torch.device | str) -> dict[str, Any]:
    """Everything needed to trace a result to its code, command, machine and software (see the module doc)."""
    return {
        **git_state(),
        "command": command_line(module, argv),
        "machine": machine(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": _version("transformers")},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_result(path: str | os.PathLike, result: dict, prov: dict) -> dict:
    """Write `result` with its provenance fields first, at the top level (`git_commit`, `command`, ...),
    atomically; return what was written."""
    from interp.io import write_json

    if clash := set(prov) & set(result):
        raise ValueError(f"result keys {sorted(clash)} would hide provenance fields; rename them")
    out = {**prov, **result}
    write_json(path, out)
    return out


# ----- timing -----

def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not only its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds that `fn()` takes, GPU work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def rounds(methods: dict[str, Callable[[], object]], runs: int, warmup: int = 1,
           device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Time every method once per round, `warmup` untimed rounds first. The order rotates from round to round,
    so that a slow spell of a shared machine falls on all methods alike."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r, name in _rotation(list(methods), runs, warmup):
        t = timed(methods[name], device)
        if r >= warmup:
            times[name].append(t)
    return times


def _rotation(names: list[str], runs: int, warmup: int) -> Iterator[tuple[int, str]]:
    """(round, method) in the order `rounds` times them: every name once per round, the order rotated by one from
    round to round, `warmup + runs` rounds."""
    for r in range(warmup + runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            yield r, name


# ----- timing on the GPU's own clock, with peak memory -----

@dataclass
class Measured:
    """What `measured_rounds` returns: per method, the seconds of each timed round (`times`, in round order), the
    peak GPU memory allocated during any of its timed rounds (`peaks`, bytes, everything resident included) and
    the largest rise of that peak over what was allocated when a call began (`working`, bytes: the call's own
    working memory); both None on the CPU."""

    times: dict[str, list[float]]
    peaks: dict[str, int | None]
    working: dict[str, int | None]


def timed_peak(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[float, int | None, int | None]:
    """Seconds that `fn()` takes, GPU work included; the peak GPU memory allocated meanwhile (bytes; weights and
    everything else already allocated count too) and what was allocated when it began (bytes); both None on the
    CPU.

    On CUDA: `torch.cuda.synchronize` (the stream is idle), `reset_peak_memory_stats`, then CUDA events
    (`enable_timing=True`) recorded on the current stream before and after `fn()`, and a synchronize: the
    events' elapsed time runs from the call to the end of the last kernel `fn` queued on that stream, host-side
    work inside `fn` included (the idle stream reaches the start event at once), on the GPU's clock rather than
    the host's. On the CPU: `timed` (perf_counter), the same as the other benchmarks."""
    device = torch.device(device)
    if device.type != "cuda":
        return timed(fn, device), None, None
    with torch.cuda.device(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)  # every stream, not only the events'
        return start.elapsed_time(end) / 1000, torch.cuda.max_memory_allocated(device), before


def measured_rounds(methods: dict[str, Callable[[], object]], runs: int, warmup: int = 1,
                    device: torch.device | str = "cpu") -> Measured:
    """`rounds` (the same rotating order, `warmup` untimed rounds first) timed by `timed_peak`: CUDA events and
    the peak memory of each method on a GPU, perf_counter on the CPU."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    peaks: dict[str, int | None] = {name: None for name in methods}
    working: dict[str, int | None] = {name: None for name in methods}
    for r, name in _rotation(list(methods), runs, warmup):
        t, peak, before = timed_peak(methods[name], device)
        if r >= warmup:
            times[name].append(t)
            if peak is not None and before is not None:
                peaks[name] = max(peak, peaks[name] or 0)
                working[name] = max(peak - before, working[name] or 0)
    return Measured(times, peaks, working)


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Per method: the median seconds (`<name>_s`), its ratio to the baseline's median (`<name>_ratio`), and the
    median over rounds of the ratio within one round (`<name>_paired_ratio`, steadier on a busy machine)."""
    med = {name: statistics.median(t) for name, t in times.items()}
    out: dict[str, float] = {f"{name}_s": med[name] for name in times}
    for name, t in times.items():
        if name != baseline:
            out[f"{name}_ratio"] = med[name] / med[baseline]
            out[f"{name}_paired_ratio"] = statistics.median(a / b for a, b in zip(t, times[baseline]))
    return out


# ----- steered generation -----

def generate_kwargs(model, prompts: list[str], tokens: int) -> dict[str, Any]:
    """`hf.generate` arguments for greedy generation of exactly `tokens` new tokens after the chat-formatted
    `prompts` (one left-padded batch on the model's device)."""
    batch = model.tokenize(model.prepare_prompts(prompts))
    return dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=tokens,
                min_new_tokens=tokens, do_sample=False, pad_token_id=model.pad_id)


def generation_overhead(model, intervention, prompts: list[str], tokens: int, runs: int) -> dict[str, Any]:
    """Generation of exactly `tokens` new tokens (greedy) under `intervention` vs plain `hf.generate` on the same
    batch: medians of `runs` rounds after one warm-up, the order rotated."""
    kw = generate_kwargs(model, prompts, tokens)

    def steered():
        with model.intervene(intervention):
            return model.hf.generate(**kw)

    with torch.no_grad():
        times = rounds({"plain": lambda: model.hf.generate(**kw), "steered": steered}, runs, 1, model.device)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"plain_generate_s": med["plain"], "steered_generate_s": med["steered"],
            "steered_ratio": med["steered"] / med["plain"], "runs": runs, "new_tokens": tokens,
            "prompts": len(prompts), "times_s": times}
