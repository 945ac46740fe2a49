"""llama.cpp control-vector GGUF export: layout read back with gguf's own reader, round trip, errors."""

import gguf
import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.steering.control_vector import export_control_vector, read_control_vector, read_model_hint


def test_layout_read_with_gguf_reader(tmp_path):
    g = torch.Generator().manual_seed(0)
    dirs = {3: torch.randn(16, generator=g), 1: torch.randn(16, generator=g), 10: torch.randn(16, generator=g)}
    path = export_control_vector(dirs, tmp_path / "sub" / "refusal.gguf", model_hint="qwen2")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "qwen2"
    layer_count = reader.get_field("controlvector.layer_count")
    assert layer_count.contents() == 3 and layer_count.types == [gguf.GGUFValueType.UINT32]
    names = [t.name for t in reader.tensors]
    assert names == ["direction.1", "direction.3", "direction.10"]  # N = our 0-based block index
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [16]
        np.testing.assert_array_equal(np.asarray(t.data), dirs[int(t.name.split(".")[1])].numpy())
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_round_trip_from_stacked_tensor(tmp_path):
    stack = torch.randn(6, 8, dtype=torch.float64)
    stack[0] = 0  # unused block-0 row is left out
    stack[4] = 0
    path = export_control_vector(stack, tmp_path / "cv.gguf", model_hint="llama", n_layers=6)
    back = read_control_vector(path)
    assert list(back) == [1, 2, 3, 5]
    for i, v in back.items():
        assert v.dtype == torch.float32 and torch.equal(v, stack[i].float())
    assert read_model_hint(path) == "llama"


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "cv.gguf"
    export_control_vector({1: torch.ones(4)}, path, "llama")
    export_control_vector({2: torch.full((4,), 2.0)}, path, "llama")
    assert list(read_control_vector(path)) == [2]


@pytest.mark.parametrize("directions,kwargs,pattern", [
    ({0: torch.ones(4), 1: torch.ones(4)}, {}, "block 0 cannot be exported"),
    (torch.ones(3, 4), {}, "block 0 cannot be exported"),  # a non-zero row 0
    ({1: torch.ones(4), 2: torch.ones(5)}, {}, "different lengths"),
    ({1: torch.ones(2, 4)}, {}, r"shape \(2, 4\)"),
    ({-1: torch.ones(4)}, {}, "non-negative ints"),
    ({"1": torch.ones(4)}, {}, "non-negative ints"),
    ({1: torch.tensor([1.0, float("nan")])}, {}, "NaN"),
    ({}, {}, "no directions"),
    (torch.zeros(3, 4), {}, "no directions"),
    (torch.ones(4), {}, r"\[layers, d\]"),
    ({5: torch.ones(4)}, {"n_layers": 5}, r"outside the model's 5 layers"),
    ({1: torch.ones(4)}, {"model_hint": ""}, "model_hint"),
])
def test_export_errors(tmp_path, directions, kwargs, pattern):
    kwargs = {"model_hint": "llama", **kwargs}
    with pytest.raises(InterpError, match=pattern):
        export_control_vector(directions, tmp_path / "x.gguf", **kwargs)
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_read_errors(tmp_path):
    with pytest.raises(InterpError, match="does not exist"):
        read_control_vector(tmp_path / "none.gguf")
    (tmp_path / "v.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(InterpError, match="not a GGUF file"):
        read_control_vector(tmp_path / "v.safetensors")
    (tmp_path / "trunc.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(InterpError, match="truncated or corrupt"):
        read_control_vector(tmp_path / "trunc.gguf")
    other = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(other), "llama")
    w.add_tensor("blk.0.attn_norm.weight", np.ones(4, dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(InterpError, match="architecture 'llama', not a control vector"):
        read_control_vector(other)
