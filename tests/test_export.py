"""`rr-edge export`: torchvision classifiers and user modules to valid, self-contained ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_onnx

from rr_edge.blocks import analyze
from rr_edge.cli import main
from rr_edge.export import SEED, export_model
from rr_edge.onnx_io import load_model

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def torch_reference(name: str, x: np.ndarray) -> np.ndarray:
    torch.manual_seed(SEED)  # export_model seeds the same way, so the weights agree
    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_cli_export_is_valid_self_contained_and_matches_torch(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r18.onnx"
    assert main(["export", "resnet18", "--input-size", "96", "--batch", "2", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.onnx"]  # no external data, no temp files
    model = onnx.load(out, load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    graph = analyze(model, "r18")
    assert [(t.name, t.shape, t.dtype) for t in graph.inputs] == [("input", (2, 3, 96, 96), "float32")]
    assert [(t.name, t.shape) for t in graph.outputs] == [("output", (2, 1000))]
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    np.testing.assert_allclose(
        run_onnx(model, {"input": x})["output"], torch_reference("resnet18", x), rtol=1e-3, atol=1e-4
    )


def test_torchscript_exporter_fallback_path(tmp_path: Path) -> None:
    path = export_model("mobilenet_v2", tmp_path / "m.onnx", input_size=64, dynamo=False)
    model = load_model(path)
    graph = analyze(model, "m")
    assert len(graph) >= 10
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(
        run_onnx(model, {"input": x})["output"], torch_reference("mobilenet_v2", x), rtol=1e-3, atol=1e-4
    )


def test_export_overwrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    export_model("squeezenet1_1", out, input_size=64)
    assert load_model(out).graph.input[0].name == "input"


OTHER_MODELS = ["squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5", "regnet_y_400mf", "efficientnet_b0",
                "convnext_tiny", "mobilenet_v3_small", "densenet121", "inception_v3", "wide_resnet50_2"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHER_MODELS)
def test_other_torchvision_models_export_and_split(zoo, name: str) -> None:
    from test_slicing import check_chained

    size = 299 if name == "inception_v3" else 224
    model, graph = zoo(name, size)
    assert len(graph) >= 5
    check_chained(model, graph, splits=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101",
                                  "resnet152", "vgg11", "vgg13", "vgg16"])  # fmt: skip
def test_paper_models_export_at_768(zoo, name: str) -> None:
    model, graph = zoo(name, 768)
    assert graph.inputs[0].shape == (1, 3, 768, 768)
    assert graph.outputs[0].shape == (1, 1000)
    assert all(b.signature for b in graph.blocks)


def test_models_built_for_one_size_are_built_for_the_asked_one() -> None:
    """ViT takes its image size at construction: exporting it at --input-size 64 used to fail (built for 224)."""
    from rr_edge.export import _zoo_model

    vit = _zoo_model("vit_b_16", 64).eval()
    with torch.no_grad():
        assert tuple(vit(torch.randn(1, 3, 64, 64)).shape) == (1, 1000)
    assert _zoo_model("resnet18", 64).fc.in_features == 512  # the others adapt to any size: built as they were


def test_a_size_the_builder_refuses_is_one_clear_error(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """vit_b_16 at 60 px (patches of 16) raised an AssertionError with a traceback (found by an end-to-end sweep)."""
    code = main(["export", "vit_b_16", "--input-size", "60", "-o", str(tmp_path / "v.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cannot build vit_b_16 for --input-size 60" in err.strip().splitlines()[-1]


def test_a_size_too_small_for_the_model_is_one_clear_error_before_any_exporter(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """squeezenet1_0 at 6 px (its first convolution is 7x7): both exporters failed in turn, torch.export printing
    its own logged errors and its advice in colour codes before the error (found by an end-to-end sweep)."""
    code = main(["export", "squeezenet1_0", "--input-size", "6", "-o", str(tmp_path / "s.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "exporter" not in err and "\x1b" not in err
    assert err.strip().splitlines() == [
        "rr-edge export: error: squeezenet1_0 does not run on a 1x3x6x6 input: RuntimeError: Calculated padded input "
        "size per channel: (6 x 6). Kernel size: (7 x 7). Kernel size can't be greater than actual input size"
    ]
    assert not list(tmp_path.iterdir())


def test_an_exporter_error_is_reported_without_its_colour_codes() -> None:
    from rr_edge.export import _one_line

    exc = RuntimeError("Failed. \x1b[96mThis is step 1/3\x1b[0m of exporting\nthe model")
    assert _one_line(exc) == "RuntimeError: Failed. This is step 1/3 of exporting the model"


def test_export_builds_the_zoo_model_for_its_input_size(monkeypatch, tmp_path: Path) -> None:
    import rr_edge.export as export

    asked: list[int] = []

    def zoo_model(name: str, input_size: int) -> None:
        asked.append(input_size)
        raise export.ModelError("stop here")

    monkeypatch.setattr(export, "_zoo_model", zoo_model)
    with pytest.raises(export.ModelError, match="stop here"):
        export_model("vit_b_16", tmp_path / "v.onnx", input_size=64)
    assert asked == [64]
