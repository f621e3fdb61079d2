"""rr-server bounds its own memory (`rr_server.memory_limit`, `--max-memory-gb`): a request whose tensors would take
more than the machine has fails with RESOURCE_EXHAUSTED, and the server serves the next one. Without the bound an
Expand to a shape the request chose was allocated in full (Linux overcommits) and could get the server OOM-killed."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest
from _server_process import ServerProcess
from onnx import TensorProto, helper

from rr_edge.client import Client
from rr_edge.errors import ServerError
from rr_server import memory_limit
from rr_server.errors import InvalidArgument, ResourceExhausted, as_server_error

GIB = 2**30


def _expand_sum() -> bytes:
    """A slice whose middle tensor is as large as the `shape` input says; one float out."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["big"]), helper.make_node("ReduceSum", ["big"], ["y"])],
        "expand_sum",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _feeds(floats: int) -> dict[str, np.ndarray]:
    return {"x": np.ones(1, np.float32), "shape": np.array([floats], np.int64)}


def _sum(client: Client, slice_id: str, floats: int) -> float:
    return float(client.infer(slice_id, _feeds(floats), timeout_s=60)["y"][0])


@pytest.mark.parametrize("bound", [["--max-memory-gb", "1"], []])
def test_a_request_past_the_memory_bound_fails_alone(tmp_path, bound):
    """1.5 GiB in the middle of a run: refused under a 1 GiB bound (the server then serves on), computed without
    one (the default), which shows that the bound is what refused it."""
    server = ServerProcess(tmp_path / "data", *bound, "--log-format", "text")
    try:
        with Client(server.address) as client:
            slice_id = client.ensure_slice(_expand_sum(), label="expand_sum")
            big = 3 * GIB // 8  # floats
            if not bound:
                assert _sum(client, slice_id, big) > 0  # computed (float32 saturates: not the exact count)
            else:
                with pytest.raises(ServerError) as err:
                    _sum(client, slice_id, big)
                assert err.value.code == "RESOURCE_EXHAUSTED" and "memory" in str(err.value)
            assert _sum(client, slice_id, 1000) == 1000.0  # the next request is served
        assert server.proc.poll() is None
    finally:
        server.stop()
    assert ("memory bound: 1.00 GiB" in server.log()) == bool(bound)


def test_a_server_whose_serving_thread_dies_under_the_bound_exits_instead_of_hanging(tmp_path):
    """A 200 MiB message under a 0.5 GiB bound: gRPC fails to allocate it in its own serving thread, which died, and
    the server stayed alive answering nothing, SIGTERM included (found by review). It exits now, so that a
    supervisor restarts it."""
    server = ServerProcess(tmp_path / "data", "--max-memory-gb", "0.5", "--log-format", "text")
    try:
        with Client(server.address) as client:
            with pytest.raises(ServerError):
                client.echo_send(200 << 20, chunk_bytes=200 << 20, timeout_s=30, busy_wait_s=0)
        assert server.proc.wait(30) == memory_limit.SERVING_THREAD_DIED
    finally:
        server.stop()
    assert "gRPC's serving thread died of MemoryError: exiting" in server.log()


def test_a_bound_below_what_the_server_maps_is_refused_at_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rr_server.cli", "--data-dir", str(tmp_path), "--max-memory-gb", "0.001"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "cannot start" in done.stderr and "raise --max-memory-gb" in done.stderr


def test_the_bound_keeps_a_lower_hard_limit():
    """In a child process: the bound is what the caller asked, or the hard limit set before it when lower."""
    script = textwrap.dedent(
        """
        import resource
        from rr_server.memory_limit import data_bytes, limit_memory
        hard = data_bytes() + 2**30
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        print(limit_memory(8 * 2**30) == hard, resource.getrlimit(resource.RLIMIT_DATA) == (hard, hard))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]


def test_a_bound_below_the_data_in_use_changes_nothing():
    before = resource.getrlimit(resource.RLIMIT_DATA)
    with pytest.raises(ValueError, match="already maps"):
        memory_limit.limit_memory(1 << 20)
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def test_a_memory_error_is_resource_exhausted_and_other_errors_stay_as_they_are():
    mapped = as_server_error(MemoryError("Unable to allocate 3.00 GiB"))
    assert isinstance(mapped, ResourceExhausted) and mapped.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "3.00 GiB" in mapped.details()
    refused = InvalidArgument("bad")
    assert as_server_error(refused) is refused
    assert as_server_error(KeyError("bug")) is None  # a bug stays INTERNAL


def test_a_slice_that_cannot_be_opened_for_memory_is_not_remembered_as_refused(tmp_path):
    """Opened under a bound too low for its weights, a slice is RESOURCE_EXHAUSTED, and not remembered as one ONNX
    Runtime refuses (that refusal is answered at once to every later request, however much memory is free then)."""
    script = textwrap.dedent(
        f"""
        import numpy as np, onnx
        from onnx import TensorProto, helper, numpy_helper
        from rr_server.errors import ResourceExhausted
        from rr_server.memory_limit import data_bytes, limit_memory
        from rr_server.sessions import SessionPool

        w = numpy_helper.from_array(np.ones(2**26, np.float32), "w")  # 256 MiB of weights
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])], "weights",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**26])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2**26])], [w])
        path = "{tmp_path}/weights.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
        del w, graph
        pool = SessionPool(["CPUExecutionProvider"], capacity=2)
        limit_memory(data_bytes() + 2**27)
        try:
            pool.get("s" * 64, __import__("pathlib").Path(path))
        except ResourceExhausted as exc:
            print("exhausted", pool.failure("s" * 64) is None)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["exhausted", "True"]


def test_the_serving_thread_exit_happens_whatever_the_previous_hook_does():
    """The previous excepthook (Python's, writing to a log pipe whose reader went away) raised, and the exit never
    came: the server hung as before (found by review). Another thread's death only reaches the previous hook."""
    script = textwrap.dedent(
        """
        import os, threading
        from rr_server.memory_limit import exit_when_serving_stops

        seen = []
        def raising(args):
            seen.append(args.thread.name)
            raise OSError("the log pipe is closed")
        threading.excepthook = raising
        exit_when_serving_stops()

        def fail():
            raise MemoryError

        other = threading.Thread(target=fail, name="worker")
        other.start(); other.join()
        print("alive after", seen, flush=True)
        serving = threading.Thread(target=fail, name="Thread-1 (_serve)")
        serving.start(); serving.join()
        print("still alive", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == memory_limit.SERVING_THREAD_DIED, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "alive after ['worker']" and "still alive" not in done.stdout
