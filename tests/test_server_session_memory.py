"""A slice's run gives its memory back: ONNX Runtime's CPU arena kept each cached session's peak, so four 139-byte
slices that expand to 2 GiB inside pinned 8.7 GB of the server until their sessions were evicted (the session cache
counts slices, not bytes). Measured in a fresh process set up as rr-server sets itself up (its malloc tuning and its
session options)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_RUN = textwrap.dedent(
    """
    import numpy as np, onnxruntime as ort
    from onnx import TensorProto, helper
    from rr_proto.allocator import tune_allocator
    from rr_server.sessions import session_options

    tune_allocator()
    n = 2**28  # floats: 1 GiB in the middle of the run, one float out
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [n])
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["big"]), helper.make_node("ReduceSum", ["big"], ["y"])],
        "expand_sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
    before = rss()
    session.run(None, {"x": np.ones(1, np.float32)})
    print(rss() - before)
    """
)


def test_a_sessions_run_does_not_keep_its_peak_memory() -> None:
    done = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kept = int(done.stdout.split()[-1])
    assert kept < 256 * 2**20, f"the session kept {kept / 2**20:.0f} MiB after its run"
