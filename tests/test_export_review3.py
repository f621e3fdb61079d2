"""Writing models over protobuf's 2 GiB limit: `rr-edge slice` and `save_model` put the weights in external data,
and a second export to the same path replaces its data file (export review 3). The limit is lowered here so small
models take that path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_onnx
from google.protobuf.message import EncodeError
from onnx import TensorProto, helper, numpy_helper

import rr_edge.export as export
import rr_edge.onnx_io as onnx_io
from rr_edge.cli import main
from rr_edge.errors import ModelError
from rr_edge.onnx_io import load_model, save_model

FP = TensorProto.FLOAT


def matmul_chain(seed: int = 0) -> onnx.ModelProto:
    """x -> (MatMul 64x64 -> Relu) x 3: three 16 KiB weights."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for j in range(3):
        inits.append(numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{j}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{j}"], [f"m{j}"]),
            helper.make_node("Relu", [f"m{j}"], [f"r{j}"]),
        ]
        prev = f"r{j}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", FP, [2, 64])],
                              [helper.make_tensor_value_info(prev, FP, [2, 64])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def external_locations(path: Path) -> set[str]:
    model = onnx.load(path, load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def test_slice_of_a_model_over_the_limit_writes_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A slice over 2 GiB went to SerializeToString and crashed with protobuf's EncodeError (found by review)."""
    src, out = tmp_path / "big.onnx", tmp_path / "s.onnx"
    onnx.save(matmul_chain(), src)
    monkeypatch.setattr(onnx_io, "_MAX_INLINE_BYTES", 10_000)
    assert main(["slice", str(src), "--blocks", "0:-1", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "s.onnx", "s.onnx.data"]  # no temporaries
    assert external_locations(out) == {"s.onnx.data"}
    assert (tmp_path / "s.onnx.data").stat().st_size == 3 * 64 * 64 * 4
    load_model(out)  # valid, and its data complete
    x = {"x": np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)}
    assert np.array_equal(run_onnx(out, x)["r2"], run_onnx(src, x)["r2"])


def test_saving_again_replaces_the_data_file(tmp_path: Path) -> None:
    """onnx's own writer appends to an existing data file: a second save must replace it, weights and all."""
    out = tmp_path / "m.onnx"
    save_model(matmul_chain(seed=0), out, external=True)
    size = (tmp_path / "m.onnx.data").stat().st_size
    save_model(matmul_chain(seed=1), out, external=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size == size
    written, wanted = load_model(out).graph.initializer, matmul_chain(seed=1).graph.initializer
    for a, b in zip(written, wanted, strict=True):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_a_failed_save_keeps_the_old_files_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.onnx"
    save_model(matmul_chain(), out, external=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(model: onnx.ModelProto, fh, location: str) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"part of the weights")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_io, "_move_tensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_model(matmul_chain(seed=1), out, external=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


class Unwritable:
    """A model protobuf refuses to write (as it does one over 2 GiB it cannot split), with or without its weights."""

    def __init__(self) -> None:
        self._model = matmul_chain()

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        raise EncodeError("Failed to serialize proto")


def test_a_model_protobuf_cannot_write_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ModelError, match="cannot write the ONNX model"):
        save_model(Unwritable(), tmp_path / "m.onnx")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    src = tmp_path / "src.onnx"
    onnx.save(matmul_chain(), src)
    monkeypatch.setattr("rr_edge.commands.slice.slice_model", lambda *args: Unwritable())
    assert main(["slice", str(src), "--blocks", "0:0", "-o", str(tmp_path / "s.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rr-edge slice: error: ") and "cannot write the ONNX model" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]


WIDE = "import torch\n\n\ndef make():\n    return torch.nn.Conv2d(3, 64, 3, padding=1)\n"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter says it is legacy
def test_exporting_again_to_the_same_path_replaces_the_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each export of a model with external data to one path grew its .data by all the weights (found by review)."""
    pytest.importorskip("torch")
    (tmp_path / "wide_module.py").write_text(WIDE)
    spec, out = f"{tmp_path / 'wide_module.py'}:make", tmp_path / "out" / "m.onnx"
    monkeypatch.setattr(export, "_MAX_INLINE_BYTES", 1000)  # 7 KiB of weights: external data
    sizes = []
    for _ in range(3):
        export.export_model(None, out, input_size=8, from_callable=spec, dynamo=False)
        sizes.append((out.parent / "m.onnx.data").stat().st_size)
    assert sizes[0] >= 64 * 3 * 3 * 3 * 4 and sizes == [sizes[0]] * 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert external_locations(out) == {"m.onnx.data"}
    load_model(out)
