"""ONNX Runtime sessions of the node and of the server leave their threads to the scheduler (`rr_edge.cpus`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from rr_edge import cpus
from rr_edge.cpus import ort_threads, physical_cores
from rr_edge.session import OrtSettings
from rr_server.sessions import session_options


def _topology(root: Path, siblings: dict[int, str]) -> Path:
    for cpu, listed in siblings.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(listed + "\n")
    return root


def test_hyperthreads_of_one_core_count_once(tmp_path):
    sys_cpu = _topology(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})
    assert physical_cores([0, 1, 2, 3], sys_cpu) == 2
    assert physical_cores([0, 2], sys_cpu) == 1  # an affinity of one core's two threads


def test_a_cpu_without_readable_topology_counts_alone_unless_a_sibling_lists_it(tmp_path):
    sys_cpu = _topology(tmp_path, {0: "0-1", 1: "0-1", 2: "2,3"})
    assert physical_cores([0, 1, 5], sys_cpu) == 2
    assert physical_cores([0, 2, 3], sys_cpu) == 2  # cpu3 unreadable, but cpu2 names it as its sibling
    assert physical_cores([], sys_cpu) == 1


def test_an_explicit_thread_count_is_kept_and_zero_is_the_core_count(monkeypatch):
    assert ort_threads(3) == 3
    assert ort_threads(0) == ort_threads(-1) == physical_cores() >= 1
    monkeypatch.delenv("RR_THREADS", raising=False)
    assert OrtSettings().resolved().intra_op_threads == physical_cores()  # what reports say is what runs
    monkeypatch.setattr(cpus, "SYS_CPU", Path("/nonexistent"))
    assert ort_threads(0) == 0  # no sysfs: ONNX Runtime's own choice


PIN_WAIT_S = 2.0


def _pinned_threads_made_by(options: ort.SessionOptions) -> list[str]:
    """The affinity lists of the threads a new session adds that may not run on every CPU this process may use."""

    def threads() -> dict[str, str]:
        found = {}
        for task in Path("/proc/self/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    found[task.name] = line.split()[1]
        return found

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    before = threads()
    everywhere = before[str(os.getpid())]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # A new pool thread pins itself once it runs: on a loaded host it may not have yet (CI read ONNX Runtime's own
    # default as pinning nothing). Read again until one is pinned, for a while: a check for none waits it out.
    deadline = time.monotonic() + PIN_WAIT_S
    while True:
        made = {tid: cpus for tid, cpus in threads().items() if tid not in before}
        pinned = [cpus for cpus in made.values() if cpus != everywhere]
        if pinned or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    del session
    return pinned


@pytest.mark.skipif(physical_cores() < 2, reason="ONNX Runtime makes no pool thread on a single core")
def test_sessions_of_the_node_and_the_server_pin_no_thread():
    assert _pinned_threads_made_by(ort.SessionOptions()), "control: ONNX Runtime's own default pins its pool threads"
    assert _pinned_threads_made_by(session_options()) == []
    assert _pinned_threads_made_by(OrtSettings(intra_op_threads=0).session_options()) == []
