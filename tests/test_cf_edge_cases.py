"""Edge cases of the cf_cpp engine (found by review): repeated measurements in a fold-in, states that save wrote and
load refused, what load costs for a small file, paths save and load take, index arrays at the binding."""

from __future__ import annotations

import copy
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cf_cpp import CFModel, InvalidInputError, ModelFileError, _core


def additive_fleet(n_cols: int = 40, seed: int = 0):
    """A fleet whose latencies are flops / speed: the model, its rows' data, the flops and additive features."""
    rng = np.random.default_rng(seed)
    flops = np.exp(rng.uniform(0, 8, n_cols))  # block sizes spanning ~3000x
    add = np.c_[flops, np.ones(n_cols)]
    r, c = (a.ravel() for a in np.indices((15, n_cols)))
    speed = np.exp(rng.normal(size=15))
    v = flops[c] / speed[r] * np.exp(0.05 * rng.normal(size=r.size))
    model = CFModel(rank=2, threads=1).fit(r, c, v, 15, n_cols, np.log(flops)[:, None], add)
    return model, flops, add


def test_repeated_measurements_of_one_column_are_one_entry_of_the_additive_choice() -> None:
    """Ten measurements of one block cross-validated perfectly: the row became additive with slopes fixed by nothing
    but the tiny ridge, and predicted the measured block's latency for every block (0.51 ms for a 1458 ms one)."""
    model, flops, _ = additive_fleet()
    small, big = int(np.argmin(flops)), int(np.argmax(flops))
    once = model.fold_in_row([small], [flops[small] / 2])
    ten_times = model.fold_in_row([small] * 10, [flops[small] / 2] * 10)
    assert model.additive_rows.size == 0
    assert model.predict([ten_times], [big])[0] == pytest.approx(model.predict([once], [big])[0], rel=0.01)
    assert model.predict([ten_times], [big])[0] == pytest.approx(flops[big] / 2, rel=0.1)


def test_an_additive_fold_in_of_values_near_the_largest_double_copies_and_pickles() -> None:
    """The regression kept was fitted on all entries, the choice cross-validated on every second one: values of 1e308
    among the others overflowed its sums, and its NaN weights made a model that save wrote and load refused."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=(200, 3)).astype(float)
    feats = np.log1p(counts)
    r, c = (a.ravel() for a in np.indices((10, 200)))
    v = np.exp(rng.normal(size=10)[r] + 2 * np.sin(3 * feats[c, 0]) + 0.05 * rng.normal(size=r.size))
    model = CFModel(rank=2, threads=1).fit(r, c, v, 10, 200, feats, counts)
    shown = np.arange(150)
    values = 2.0 + counts[shown] @ [1.5, 0.5, 3.0]
    values[1::2] = 1e308
    row = model.fold_in_row(shown, values)
    assert np.isfinite(model.predict([row] * 200, np.arange(200), log=True)).all()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(twin.predict_matrix(log=True), model.predict_matrix(log=True))


def test_add_cols_refuses_additive_features_that_overflow_an_additive_row() -> None:
    """A new column's additive features of 1e308 (finite, >= 0) made an additive row predict inf there: a model that
    save wrote and load refused, so copies and pickles failed."""
    rng = np.random.default_rng(0)
    flops = rng.uniform(0.5, 2.0, 40)
    r, c = (a.ravel() for a in np.indices((15, 40)))
    v = np.exp(rng.normal(size=15)[r] + 2 * np.sin(5 * np.log(flops[c])) + 0.05 * rng.normal(size=r.size))
    model = CFModel(rank=2, threads=1).fit(r, c, v, 15, 40, np.log(flops)[:, None], np.c_[flops, np.ones(40)])
    shown = np.arange(12)
    row = model.fold_in_row(shown, 0.3 + 2.0 * flops[shown])  # an exactly additive device, unlike the fleet
    assert model.additive_rows.tolist() == [row]
    with pytest.raises(InvalidInputError, match=f"additive row {row}'s values overflow"):
        model.add_cols(1, [[1.0]], [[1e308, 1.0]])
    assert model.n_cols == 40
    first = model.add_cols(1, [[1.0]], [[1e6, 1.0]])
    assert model.predict([row], [first])[0] == pytest.approx(0.3 + 2e6, rel=1e-3)
    np.testing.assert_array_equal(copy.deepcopy(model).predict_matrix(), model.predict_matrix())


def test_a_fold_in_that_diverges_raises_and_changes_nothing() -> None:
    """Without ridges an exactly low-rank fit leaves a noise variance of 1e-26; a fold-in of 50 inconsistent entries
    then appended NaN parameters: predictions of NaN, and a model that save wrote and load refused."""
    rng = np.random.default_rng(20)
    n_rows, n_cols = int(rng.integers(3, 30)), int(rng.integers(20, 300))
    r, c = (a.ravel() for a in np.indices((n_rows, n_cols)))
    scale = 10 ** rng.uniform(0, 2.5)
    p, q = rng.normal(size=(n_rows, 2)) * scale, rng.normal(size=(n_cols, 2)) * scale / 10
    y = np.exp(np.clip((p @ q.T)[r, c] + rng.normal(size=n_rows)[r] * scale, -700, 700))
    ridges = {"reg": 0.0, "reg_bias": 0.0, "reg_col": 0.0, "reg_col_bias": 0.0}
    model = CFModel(rank=int(rng.integers(0, 4)), threads=1, iterations=30, **ridges).fit(r, c, y, n_rows, n_cols)
    for k in (1, 5):  # consistent enough: rows of their own
        model.fold_in_row(rng.integers(0, n_cols, k), np.exp(np.clip(rng.normal(size=k) * scale * 3, -700, 700)))
    before = model.predict_matrix(log=True)
    cols, values = rng.integers(0, n_cols, 50), np.exp(np.clip(rng.normal(size=50) * scale * 3, -700, 700))
    with pytest.raises(InvalidInputError, match="diverged to non-finite parameters"):
        model.fold_in_row(cols, values)
    np.testing.assert_array_equal(model.predict_matrix(log=True), before)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_matrix(log=True), before)


def test_save_refuses_a_model_that_load_would_refuse(tmp_path) -> None:
    """A model with more additive features per column than a model file may hold (2**20) was saved, then refused by
    load: pickle.dumps worked and pickle.loads failed."""
    model = CFModel(rank=1, threads=1).fit([0, 0], [0, 1], [1.0, 2.0], 1, 2, additive_features=np.ones((2, 2**20 + 1)))
    with pytest.raises(InvalidInputError, match="which load would refuse: 1048577 additive features"):
        model.save(tmp_path / "m.cfm")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInputError, match="load would refuse"):
        pickle.dumps(model)


def model_file(n_rows: int, n_cols: int, kernel_row: bool = False) -> bytes:
    """A format 4 model file (no checksum; src/serialize.cpp) of rank 0 with one column feature and O(n_rows + n_cols)
    bytes; with `kernel_row`, row 0 has a kernel residual, so load builds the n_rows x n_cols residual table."""

    def vec(a, dtype: str = "<f8") -> bytes:
        a = np.ascontiguousarray(a, dtype=dtype)
        return struct.pack("<Q", a.size) + a.tobytes()

    empty = struct.pack("<Q", 0)
    x = np.c_[np.linspace(-1, 1, n_cols), np.ones(n_cols)]
    config = struct.pack("<Ii5diQid?", 4, 0, 0.3, 0.01, 3.0, 3.0, 1.0, 20, 0, 0, 0.1, True)  # version 4, rank 0
    head = b"CFCPPMF\0" + config + struct.pack("<qqqd", n_rows, n_cols, 1, 0.0)  # 1 feature, mu
    rows = vec(np.zeros(n_rows)) + vec(np.ones(n_rows)) + vec(np.ones(n_rows), "<i8") + struct.pack("<d", 0.01)
    cols = vec(np.zeros(n_cols)) + vec(x) + vec([0.0]) + vec([1.0]) + vec(np.zeros(2)) + vec(np.ones(n_cols), "<i8")
    kernel = vec([0], "<i8") + vec([1e-3]) + 2 * empty if kernel_row else 4 * empty
    per_row = kernel + (n_rows - 1) * 4 * empty
    return head + rows + cols + per_row + struct.pack("<q", 0) + 2 * empty + n_rows * empty


def test_load_of_a_small_file_costs_what_the_file_does(tmp_path) -> None:
    """load checked every entry's prediction: a 6 MB file of 65,536 rows x 65,536 columns took O(4e9) work. It now
    bounds the predictions from the parameters. No clock: this 100 MB file of 2**20 x 2**20 entries (it loads in well
    under a second) would cost the old check 1e12 predictions, hours, and run past the subprocess's timeout. In a
    subprocess because pytest-timeout's signal cannot stop a call that is still in C++: the timeout kills it."""
    path = tmp_path / "wide.cfm"
    path.write_bytes(model_file(2**20, 2**20))
    load = "import sys; from cf_cpp import CFModel; m = CFModel.load(sys.argv[1]); print(m.n_rows, m.predict([5], [7]))"
    out = subprocess.run([sys.executable, "-c", load, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(2**20), "[1.]"]


_LOAD_OUT_OF_MEMORY = """
import resource, sys
from cf_cpp import CFModel, ModelFileError

size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 500 * 2**20, resource.RLIM_INFINITY))
for path in sys.argv[1:]:
    try:
        CFModel.load(path)
        print("loaded")
    except ModelFileError as e:
        print(e)
    except MemoryError as e:
        print("MemoryError", e)
"""


def test_load_refuses_a_residual_table_past_its_budget_or_the_memory(tmp_path) -> None:
    """A file of a few MB declaring 16,385 x 16,385 entries with one kernel residual made load allocate and fill a
    2 GiB residual table; past the memory that was a MemoryError. Now a table past kMaxLoadedTable (2**28 entries) is
    refused before it is allocated, and running out of memory in load is a ModelFileError. In a subprocess: it lowers
    its own address-space limit."""
    over, under = tmp_path / "over.cfm", tmp_path / "under.cfm"
    over.write_bytes(model_file(16_385, 16_385, kernel_row=True))
    under.write_bytes(model_file(12_000, 12_000, kernel_row=True))  # 1.1 GB of table: past the 500 MB left
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LOAD_OUT_OF_MEMORY), str(over), str(under)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [
        f"'{over}' is not a valid cf_cpp model file: its kernel residuals' table of 16385 rows x 16385 columns is "
        "larger than the 268435456 entries a model file may have",
        f"cannot load '{under}': out of memory",
    ]


def test_paths_may_be_any_bytes_and_links_may_point_to_new_files(tmp_path) -> None:
    """A bytes path that is not UTF-8 was a TypeError from the binding; saving through a link to a file that does not
    exist yet was an error, though a model is saved through a link to its target."""
    model = CFModel(rank=1, threads=1).fit([0, 1, 1], [0, 1, 0], [1.0, 2.0, 3.0], 2, 2)
    latin1 = os.fsencode(tmp_path) + b"/caf\xe9.cfm"
    model.save(latin1)
    np.testing.assert_array_equal(CFModel.load(latin1).predict_matrix(), model.predict_matrix())
    (tmp_path / "current.cfm").symlink_to("next.cfm")  # dangling, relative
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "chain.cfm").symlink_to("../current.cfm")
    model.save(tmp_path / "sub" / "chain.cfm")
    assert (tmp_path / "current.cfm").is_symlink() and (tmp_path / "sub" / "chain.cfm").is_symlink()
    np.testing.assert_array_equal(CFModel.load(tmp_path / "next.cfm").predict_matrix(), model.predict_matrix())
    (tmp_path / "loop.cfm").symlink_to("loop.cfm")
    with pytest.raises(ModelFileError, match="cannot save through the link .*: Too many levels of symbolic links"):
        model.save(tmp_path / "loop.cfm")


def test_the_binding_takes_index_arrays_only_as_int64() -> None:
    """cf_cpp._core converted float index arrays by truncating them (rows [0.9, 1.7] fitted rows 0 and 1)."""
    model = _core.Model(rank=1, threads=1)
    index, floats, values = np.array([0, 1]), np.array([0.9, 1.7]), np.array([1.0, 2.0])
    for bad in (floats, index.astype(np.int32)):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            model.fit(bad, index, values, 2, 2)
        with pytest.raises(TypeError, match="incompatible function arguments"):
            model.fit(index, bad, values, 2, 2)
    model.fit(index, index, values, 2, 2)
    for call in (
        lambda bad: model.predict(bad, index),
        lambda bad: model.predict(index, bad),
        lambda bad: model.fold_in_row(bad, values),
        lambda bad: model.refit(bad, index, values),
        lambda bad: model.refit(index, bad, values),
    ):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            call(floats)
    assert model.n_rows == 2 and model.row_counts.tolist() == [1, 1]
    # The facade converts what is exact and refuses the rest, as before.
    assert CFModel(rank=1).fit(np.array([0, 1], np.int32), [0, 1], [1.0, 2.0], 2, 2).n_rows == 2
    with pytest.raises(InvalidInputError, match="rows must hold integers"):
        CFModel(rank=1).fit(floats, [0, 1], [1.0, 2.0], 2, 2)


def _run_child(code: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (its heap and signals its own)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip


def test_a_fit_of_high_rank_runs() -> None:
    """A fit of rank 256 or more crashed the interpreter (SIGSEGV): GCC's vectorised normal-equation kernel read up to
    three rows past its block, which in a fresh process ended a worker thread's heap mapping (review)."""
    done = _run_child(
        """
        import numpy as np
        from cf_cpp import CFModel
        r, c = (a.ravel() for a in np.indices((20, 100)))
        values = np.random.default_rng(0).uniform(1, 2, r.size)
        for rank in (256, 512):
            model = CFModel(rank=rank, iterations=1).fit(r, c, values, 20, 100)
            assert np.isfinite(model.predict(r, c)).all()
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_ctrl_c_stops_a_long_fit_and_leaves_the_model_as_it_was() -> None:
    """Ctrl-C during a fit of minutes was only seen once the fit had ended (review): it now stops the fit before its
    next solve, raising KeyboardInterrupt, the model as it was (unfitted; or fitted as before a refit)."""
    done = _run_child(
        """
        import os, signal, threading
        import numpy as np
        from cf_cpp import CFModel
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored
        r, c = (a.ravel() for a in np.indices((20, 3000)))
        values = np.random.default_rng(0).uniform(1, 2, r.size)
        model = CFModel(rank=512, iterations=40)  # minutes, uninterrupted
        def interrupted(call):
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                call()
            except KeyboardInterrupt:
                return True
            return False
        assert interrupted(lambda: model.fit(r, c, values, 20, 3000)) and not model.is_fitted
        small = CFModel(rank=512, iterations=1).fit(r[:200], c[:200], values[:200], 20, 3000)
        before = small.predict(r[:50], c[:50])
        assert interrupted(lambda: small.refit(r, c, values, iterations=40))
        assert np.array_equal(small.predict(r[:50], c[:50]), before)
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
