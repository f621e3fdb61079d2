"""docs/protocol.md: every example runs against a live server, in document order.

The `sh` blocks form one bash script (they need the Buf CLI: `buf` on PATH or its path in $BUF; skipped otherwise);
each `python` block runs as its own process (tritonclient cannot share a process with rr_proto's `inference` package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _server_support import conv_model, sha256, start_server

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "protocol.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)


@pytest.fixture
def live(tmp_path):
    server = start_server(tmp_path / "data")
    data = conv_model()
    (tmp_path / "slice.onnx").write_bytes(data)
    env = dict(os.environ, RR_SERVER=server.address, SLICE=str(tmp_path / "slice.onnx"), SLICE_ID=sha256(data),
               PYTHONPATH=str(REPO))  # fmt: skip
    yield server, env, tmp_path
    server.stop(grace=1)


def _buf() -> str | None:
    """$BUF (make test sets it), a buf on the PATH, or the one `make setup` installs under .cache."""
    installed = REPO / ".cache" / "buf" / "node_modules" / ".bin" / "buf"
    return os.environ.get("BUF") or shutil.which("buf") or (str(installed) if installed.exists() else None)


def test_doc_has_examples_for_every_rpc():
    text = DOC.read_text()
    from rr_proto.inference import grpc_service_pb2 as kserve
    from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr

    for file in (kserve.DESCRIPTOR, rr.DESCRIPTOR):
        for service in file.services_by_name.values():
            for method in service.methods:
                assert f"{service.full_name}/{method.name}" in text, f"{service.full_name}/{method.name} undocumented"


def test_the_slice_the_examples_use_is_made_when_none_is_given(tmp_path):
    """The examples needed a slice of one x [1,3,8,8] input and said "any small ONNX model" (found by review)."""
    import numpy as np
    import onnx
    import onnxruntime

    script = "set -euo pipefail\nunset SLICE\n" + blocks("sh")[0].replace("$BUF --list-methods", ": ")
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    model = onnx.load(tmp_path / "slice.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input] == [
        ("x", [1, 3, 8, 8])
    ]
    # onnx writes its newest IR version unless told; ONNX Runtime refuses one newer than it knows (found by review)
    session = onnxruntime.InferenceSession(str(tmp_path / "slice.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})[0].shape == (1, 4, 8, 8)


@pytest.mark.skipif(_buf() is None, reason="Buf CLI not installed (npm install @bufbuild/buf; set $BUF)")
def test_buf_curl_examples(live):
    server, env, tmp = live
    script = "set -euo pipefail\n" + "\n".join(blocks("sh"))
    env["BUF"] = _buf()
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"cloudNodeId": "cloud"' in done.stdout
    assert "PROVENANCE_MEASURED" in done.stdout and "PROVENANCE_COLD_START" in done.stdout
    assert '"errorMessage": "INVALID_ARGUMENT' in done.stdout
    assert '"receivedBytes": "10"' in done.stdout
    assert server.slices.get(env["SLICE_ID"]) is not None


def test_python_examples(live):
    server, env, tmp = live
    server.slices.put_bytes((Path(env["SLICE"])).read_bytes())
    examples = blocks("python")
    assert len(examples) >= 2
    for k, code in enumerate(examples):
        path = tmp / f"example_{k}.py"
        path.write_text(code)
        done = subprocess.run([sys.executable, str(path)], env=env, cwd=tmp, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, f"example {k}:\n{done.stderr[-3000:]}"
