"""A module from an uninstalled extra: `rr-edge` and `rr-server` name the extra in one line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rr_proto.extras import missing_extra

REPO = Path(__file__).resolve().parents[1]

# Each run hides one module (None in sys.modules makes its import raise ModuleNotFoundError), then calls a CLI.
HIDE_AND_RUN = "import sys; sys.modules[{module!r}] = None; from {cli} import main; sys.exit(main({argv!r}))"


def run_without(module: str, cli: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = HIDE_AND_RUN.format(module=module, cli=cli, argv=argv)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("onnx", ["--help"]),
        ("onnx", ["blocks", "model.onnx"]),
        ("onnxruntime", ["profile", "--help"]),
    ],
)
def test_rr_edge_names_the_edge_extra(module: str, argv: list[str]) -> None:
    proc = run_without(module, "rr_edge.cli", argv)
    assert proc.returncode == 2, proc.stderr
    assert f"'{module}' module is not installed: pip install 'roadrunner[edge]'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("module", ["grpc_health", "onnxruntime"])  # onnxruntime: it said [edge] (found by review)
def test_rr_server_names_the_server_extra(tmp_path: Path, module: str) -> None:
    proc = run_without(module, "rr_server.cli", ["--data-dir", str(tmp_path), "--listen", "127.0.0.1:0"])
    assert proc.returncode == 2, proc.stderr
    assert f"'{module}' module is not installed: pip install 'roadrunner[server]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_module_of_no_extra_is_a_bug_and_keeps_its_traceback() -> None:
    assert missing_extra(ModuleNotFoundError("no module", name="rr_edge.nothing")) is None
    assert missing_extra(ModuleNotFoundError("no module", name="onnx.reference")) is not None
    proc = run_without("rr_edge.planner", "rr_edge.cli", ["plan", "--help"])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "rr_edge.planner" in proc.stderr
