"""cf_cpp from Python, found by a hands-on review of its API: results that depended on the order of the entries, tiny
features taken for constant, a Ctrl-C the kernel stage did not see, and errors that did not name what was wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cf_cpp import CFModel, InvalidInputError, ModelFileError

N_ROWS, N_COLS = 60, 400


def _data(seed: int = 0):
    """A rank-3 log-linear fleet, 30% observed, with the columns' factors (and a fourth feature) as features; the rows
    also depend on the square of that fourth feature, each its own way, which the kernel residual fits."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(N_ROWS, 3)), rng.normal(size=(N_COLS, 3))
    r, c = np.nonzero(rng.random((N_ROWS, N_COLS)) < 0.3)
    features = np.c_[v, rng.normal(size=N_COLS)]
    curvature = 0.3 * rng.normal(size=N_ROWS)
    values = np.exp(0.3 * (u @ v.T)[r, c] + curvature[r] * features[c, 3] ** 2 + rng.normal(0, 0.02, r.size))
    return r, c, values, features


def test_a_fit_does_not_depend_on_the_order_of_its_entries() -> None:
    """The kernel residual held out a fifth of each row by position: shuffled entries kept a residual on other rows
    and moved predictions by up to 7% (review); an entry given twice, with two values, by up to 34% (review)."""
    r, c, values, features = _data()
    rng = np.random.default_rng(1)
    again = rng.choice(r.size, 2000, replace=False)  # measured twice
    r, c = np.r_[r, r[again]], np.r_[c, c[again]]
    values = np.r_[values, values[again] * rng.uniform(0.8, 1.25, again.size)]
    p = rng.permutation(r.size)
    model = CFModel(rank=8, iterations=5, seed=3)
    first = model.fit(r, c, values, N_ROWS, N_COLS, features).predict_matrix()
    assert np.any(model.row_residuals != 0)  # the stage that depended on the order ran
    shuffled = CFModel(rank=8, iterations=5, seed=3).fit(r[p], c[p], values[p], N_ROWS, N_COLS, features)
    assert np.array_equal(shuffled.predict_matrix(), first)


def test_a_fold_in_does_not_depend_on_the_order_of_its_entries() -> None:
    """The additive choice cross-validates on folds taken by position; sums in another order differ in their last
    bits (review)."""
    r, c, _, features = _data()
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 5, size=(N_COLS, 3)).astype(float)
    cost = counts @ np.array([1.0, 2.0, 3.0]) + 1
    model = CFModel(rank=4, iterations=5).fit(r, c, cost[c] * np.exp(rng.normal(0, 0.01, r.size)), N_ROWS, N_COLS,
                                              features, counts)  # fmt: skip
    cols = rng.choice(N_COLS, 30, replace=False)
    p = rng.permutation(cols.size)
    rows = [model.fold_in_row(cols, cost[cols]), model.fold_in_row(cols[p], cost[cols][p])]
    collaborative = CFModel(rank=4, iterations=5).fit(r, c, cost[c], N_ROWS, N_COLS, features)  # no additive rows
    rows += [collaborative.fold_in_row(cols, cost[cols]), collaborative.fold_in_row(cols[p], cost[cols][p])]
    every = np.arange(N_COLS)
    for m, (a, b) in ((model, rows[:2]), (collaborative, rows[2:])):  # to the last bit
        assert np.array_equal(m.predict(np.full(N_COLS, a), every), m.predict(np.full(N_COLS, b), every))


def test_features_of_any_scale_are_standardised_alike() -> None:
    """Features of 1e-200 were dropped as constant (their squares underflowed), silently."""
    r, c, values, features = _data()
    base = CFModel(rank=4, iterations=3).fit(r, c, values, N_ROWS, N_COLS, features).predict_matrix()
    for scale in (1e-200, 1e200):
        scaled = CFModel(rank=4, iterations=3).fit(r, c, values, N_ROWS, N_COLS, features * scale).predict_matrix()
        np.testing.assert_allclose(scaled, base, rtol=1e-8)


@pytest.mark.parametrize("name", ["reg", "reg_bias", "reg_col", "reg_col_bias", "reg_features", "init_scale"])
def test_a_bad_constant_is_named(name: str) -> None:
    """All six said "regularisation constants must be finite and >= 0", init_scale too."""
    for value in (-1.0, float("nan")):
        with pytest.raises(InvalidInputError, match=rf"^{name} must be finite and >= 0, got"):
            CFModel(**{name: value})


def test_a_bad_feature_is_named_by_column_and_feature() -> None:
    r, c, values, features = _data()
    features[3, 1] = np.nan
    with pytest.raises(InvalidInputError, match=r"col_features\[3, 1\] = nan must be finite"):  # was "(entry 13)"
        CFModel().fit(r, c, values, N_ROWS, N_COLS, features)
    additive = np.ones((N_COLS, 2))
    additive[5, 1] = -2
    with pytest.raises(InvalidInputError, match=r"additive_features\[5, 1\] = -2 must be >= 0"):
        CFModel().fit(r, c, values, N_ROWS, N_COLS, None, additive)


def test_what_holds_no_numbers_is_a_type_error_and_ragged_lists_name_the_argument() -> None:
    r, c, values, _ = _data()
    model = CFModel(rank=2, iterations=1).fit(r, c, values, N_ROWS, N_COLS)
    for rows in (None, (i for i in range(3))):  # was "rows must be 1-D, got shape ()"
        with pytest.raises(TypeError, match="rows must be an array or a sequence of numbers"):
            model.predict(rows, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="^rows"):  # was numpy's own ValueError, naming nothing
        model.predict([[1], [1, 2]], [1, 2])  # type: ignore[list-item]


def test_add_cols_of_none_adds_nothing() -> None:
    """An empty batch of new signatures needed a special case (InvalidInputError)."""
    r, c, values, features = _data()
    model = CFModel(rank=2, iterations=1).fit(r, c, values, N_ROWS, N_COLS, features)
    before = model.predict_matrix()
    assert model.add_cols(0, np.zeros((0, features.shape[1]))) == N_COLS
    assert np.array_equal(model.predict_matrix(), before)
    with pytest.raises(InvalidInputError, match="n >= 0"):
        model.add_cols(-1, np.zeros((0, features.shape[1])))


def test_save_and_load_say_what_failed(tmp_path) -> None:
    r, c, values, _ = _data()
    model = CFModel(rank=2, iterations=1).fit(r, c, values, N_ROWS, N_COLS)
    with pytest.raises(ModelFileError, match="cannot create a temporary file in '/proc/' to write '/proc/version'"):
        model.save("/proc/version")  # it said the target could not be opened: "No such file or directory"
    path = tmp_path / "m.cf"
    model.save(path)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ModelFileError, match="goes on past the model's end"):  # was "is truncated"
        CFModel.load(path)
    data = bytearray(path.read_bytes()[:-1])
    data[len(data) // 2] ^= 0x01  # in the middle of the parameters
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        CFModel.load(path)
    state = model.__getstate__()
    state["saved"] = state["saved"][:100]
    with pytest.raises(ModelFileError, match="^the pickled model is truncated"):  # it named a temporary file
        CFModel.__new__(CFModel).__setstate__(state)


def test_ctrl_c_stops_a_fit_in_its_kernel_stage() -> None:
    """The per-row kernel residuals, often most of a fit's time, ran to their end before a Ctrl-C was seen (16 s of
    a 16.4 s fit, review). Here they would take minutes: the child's timeout fails the test."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import os, signal, threading
            import numpy as np
            from cf_cpp import CFModel
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored
            rng = np.random.default_rng(0)
            r, c = np.nonzero(rng.random((2000, 5000)) < 0.3)
            values, features = np.exp(rng.normal(size=r.size)), rng.normal(size=(5000, 40))
            model = CFModel(rank=2, iterations=0)  # no sweeps: the kernel stage is the fit (some 4 minutes here)
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                model.fit(r, c, values, 2000, 5000, features)
            except KeyboardInterrupt:
                print("interrupted", model.is_fitted)
            """
        )],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "interrupted False", done.stderr[-2000:]


def test_what_runs_out_of_memory_says_how_large() -> None:
    """predict_matrix said only std::bad_alloc; a fit of many features did not say that its features took it all."""
    model = CFModel(rank=2, iterations=1).fit([0], [0], [1.0], 2**20, 2**20)
    with pytest.raises(MemoryError, match="predict_matrix of 1048576 rows x 1048576 columns: out of memory"):
        model.predict_matrix()  # 8 TiB
    with pytest.raises(MemoryError, match="fit of 1 rows x 1 columns of 1048576 features: out of memory"):
        CFModel(rank=3).fit([0], [0], [1.0], 1, 1, np.random.default_rng(0).normal(size=(1, 2**20)))  # 8 TiB of Grams


def test_a_file_that_cannot_be_read_or_written_says_its_errno(tmp_path) -> None:
    """ModelFileError had no errno: `e.errno == errno.ENOENT` could not tell a missing file from a damaged one."""
    import errno

    with pytest.raises(ModelFileError) as missing:
        CFModel.load(tmp_path / "missing.cf")
    assert missing.value.errno == errno.ENOENT and "cannot read" in missing.value.strerror
    model = CFModel(rank=1, iterations=1).fit([0], [0], [1.0], 1, 1)
    with pytest.raises(ModelFileError) as no_dir:
        model.save(tmp_path / "no-such-dir" / "m.cf")
    assert no_dir.value.errno == errno.ENOENT
    (tmp_path / "garbage.cf").write_bytes(b"no model")
    with pytest.raises(ModelFileError, match="is truncated or not a cf_cpp model file") as garbage:
        CFModel.load(tmp_path / "garbage.cf")
    assert garbage.value.errno is None  # no system call failed
