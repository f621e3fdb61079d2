"""`rr-edge export` failures outside the exporters: one line, and no temporary file left behind (export review)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _server_support import conv_model

import rr_edge.export as export
from rr_edge.cli import main
from rr_edge.errors import ModelError

pytest.importorskip("torch")

TINY = "import torch\n\n\ndef make():\n    return torch.nn.Conv2d(3, 4, 3, padding=1)\n"


@pytest.fixture()
def tiny(tmp_path: Path) -> str:
    """--from spec of a one-conv torch module (nothing to download, quick to run)."""
    (tmp_path / "tiny_module.py").write_text(TINY)
    return f"{tmp_path / 'tiny_module.py'}:make"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".m.onnx."))


def test_an_input_too_large_to_make_is_one_line(capsys: pytest.CaptureFixture[str], tiny: str, tmp_path: Path) -> None:
    """torch.randn ran outside every try: a huge --input-size was a RuntimeError traceback from C++."""
    out = tmp_path / "m.onnx"
    assert main(["export", "--from", tiny, "--input-size", str(10**10), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "cannot make a 1x3x10000000000x10000000000 float32 input (--batch, --input-size)" in err[0]
    assert not out.exists() and not _leftovers(tmp_path)


def test_an_export_onnx_runtime_cannot_run_is_a_model_error(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's session in the export check ran outside the exporter's try: its own exception escaped."""

    def wrong_shape(torch, model, example, path, dynamo, opset, external) -> None:  # type: ignore[no-untyped-def]
        path.write_bytes(conv_model(size=5))  # a valid model whose input is 1x3x5x5, not 1x3x8x8

    monkeypatch.setattr(export, "_export", wrong_shape)
    with pytest.raises(ModelError, match="exported model check: ONNX Runtime cannot run the export: InvalidArgument"):
        export.export_model(None, tmp_path / "m.onnx", input_size=8, from_callable=tiny, dynamo=False)
    assert not (tmp_path / "m.onnx").exists() and not _leftovers(tmp_path)


def test_an_interrupted_export_leaves_no_temporary_file(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an Exception removed the temporary: a Ctrl-C in the exporter left a hidden .m.onnx.*.onnx behind."""

    def interrupted(torch, model, example, path, dynamo, opset, external) -> None:  # type: ignore[no-untyped-def]
        path.write_bytes(b"half an export")
        Path(f"{path}.data").write_bytes(b"and its weights")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_model(None, tmp_path / "m.onnx", input_size=8, from_callable=tiny, dynamo=False)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "m.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter says it is legacy
def test_the_tiny_export_still_works(tiny: str, tmp_path: Path) -> None:
    """The temporary file's clean-up does not remove the export it became."""
    path = export.export_model(None, tmp_path / "m.onnx", input_size=8, from_callable=tiny, dynamo=False)
    assert path.stat().st_size > 0 and _leftovers(tmp_path) == []
