"""Behaviour of the cf_cpp engine through its Python API (fast: small synthetic matrices, fixed seeds)."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cf_cpp  # noqa: E402  (a missing build must fail the suite)

CFModel = cf_cpp.CFModel


def synthetic(n_rows: int = 20, n_cols: int = 150, fill: float = 0.4, seed: int = 0):
    """Positive matrix whose log is row bias + feature-driven column effect + a rank-2 interaction."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_cols, 3))
    col_bias = 1.0 + 0.8 * x[:, 0] - 0.3 * x[:, 1]
    q = np.stack([0.5 * x[:, 1] + 0.2 * x[:, 2], 0.4 * x[:, 2]], axis=1)
    p = 0.5 * rng.standard_normal((n_rows, 2))
    b = 0.5 * rng.standard_normal(n_rows)
    log_truth = b[:, None] + col_bias[None, :] + p @ q.T
    mask = rng.random((n_rows, n_cols)) < fill
    rows, cols = np.nonzero(mask)
    return rows, cols, np.exp(log_truth[rows, cols]), log_truth, x


def log_rmse(model, log_truth: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    pred = model.predict(rows, cols, log=True)
    return float(np.sqrt(np.mean((pred - log_truth[rows, cols]) ** 2)))


def all_entries(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.indices(shape)
    return r.ravel(), c.ravel()


@pytest.mark.parametrize(("fill", "tol"), [(0.2, 0.15), (0.5, 0.08)])
@pytest.mark.parametrize("use_features", [True, False])
def test_fit_recovers_the_matrix(fill: float, tol: float, use_features: bool) -> None:
    rows, cols, values, truth, x = synthetic(fill=fill)
    model = CFModel(rank=4, iterations=15, seed=1).fit(
        rows, cols, values, *truth.shape, col_features=x if use_features else None
    )
    assert log_rmse(model, truth, *all_entries(truth.shape)) < (tol if use_features else 2.5 * tol)


def test_predict_units_and_log_agree() -> None:
    rows, cols, values, truth, x = synthetic()
    model = CFModel(rank=3, iterations=5).fit(rows, cols, values, *truth.shape, col_features=x)
    np.testing.assert_allclose(np.exp(model.predict(rows, cols, log=True)), model.predict(rows, cols), rtol=1e-12)
    assert model.predict_matrix().shape == truth.shape
    np.testing.assert_allclose(model.predict_matrix()[rows, cols], model.predict(rows, cols), rtol=1e-12)


def test_deterministic_for_seed_and_thread_count() -> None:
    rows, cols, values, truth, x = synthetic()
    a = CFModel(rank=4, iterations=5, seed=3, threads=1).fit(rows, cols, values, *truth.shape, col_features=x)
    b = CFModel(rank=4, iterations=5, seed=3, threads=2).fit(rows, cols, values, *truth.shape, col_features=x)
    np.testing.assert_array_equal(a.row_factors, b.row_factors)
    np.testing.assert_array_equal(a.col_factors, b.col_factors)


def test_cold_columns_use_the_feature_prior() -> None:
    rows, cols, values, truth, x = synthetic(fill=0.5)
    keep = cols < 120  # columns 120.. are never measured
    with_f = CFModel(rank=4, iterations=15).fit(rows[keep], cols[keep], values[keep], *truth.shape, col_features=x)
    without = CFModel(rank=4, iterations=15).fit(rows[keep], cols[keep], values[keep], *truth.shape)
    assert with_f.col_counts[130] == 0
    r, c = all_entries((truth.shape[0], 30))
    c = c + 120
    assert log_rmse(with_f, truth, r, c) < 0.15
    assert log_rmse(with_f, truth, r, c) < 0.3 * log_rmse(without, truth, r, c)


def test_fold_in_row_returns_new_index_and_predicts_it() -> None:
    rows, cols, values, truth, x = synthetic(n_rows=21, fill=1.0)
    train = rows < 20
    model = CFModel(rank=4, iterations=15).fit(rows[train], cols[train], values[train], 20, 150, col_features=x)
    revealed = np.arange(0, 150, 15)
    new = model.fold_in_row(revealed, np.exp(truth[20, revealed]))
    assert new == 20 and model.n_rows == 21
    c = np.arange(150)
    assert log_rmse(model, truth, np.full(150, new), c) < 0.15


def _isotropic_ridge_fold_in(model, revealed: np.ndarray, log_values: np.ndarray) -> np.ndarray:
    """The fold-in before the population prior: ridge [b, p] toward the mean row (reg_bias 0.01, reg 0.3)."""
    n_fit = int(np.count_nonzero(model.row_counts))
    mean = np.hstack([model.row_biases[:n_fit, None], model.row_factors[:n_fit]]).mean(0)
    z = np.hstack([np.ones((model.n_cols, 1)), model.col_factors])
    offset = model.global_mean + model.col_biases
    ridge = np.full(z.shape[1], 0.3)
    ridge[0] = 0.01
    zr = z[revealed]
    a = np.linalg.solve(zr.T @ zr + np.diag(ridge), zr.T @ (log_values - offset[revealed]) + ridge * mean)
    return offset + z @ a


@pytest.mark.parametrize(("offset", "slope", "n"), [(0.0, 1.0, 5), (0.4, 1.5, 5), (0.4, 1.5, 10), (-0.2, 0.7, 10)])
def test_fold_in_recognises_a_rescaled_copy_of_a_fitted_device(offset, slope, n) -> None:
    rows, cols, values, truth, x = synthetic(fill=0.5)
    model = CFModel(rank=4, iterations=15).fit(rows, cols, values, 20, 150, col_features=x)
    new_truth = offset + slope * truth[3]  # a device like device 3, slower / more sensitive
    revealed = np.arange(0, 150, 150 // n)[:n]
    new = model.fold_in_row(revealed, np.exp(new_truth[revealed]))
    error = np.sqrt(np.mean((model.predict(np.full(150, new), np.arange(150), log=True) - new_truth) ** 2))
    baseline = np.sqrt(np.mean((_isotropic_ridge_fold_in(model, revealed, new_truth[revealed]) - new_truth) ** 2))
    assert error < 0.2 * baseline
    assert model.row_scales[new] == pytest.approx(slope, abs=0.05)  # the column-bias scale g of the new row


def test_fold_in_recognises_a_device_in_a_population_larger_than_the_scored_experts() -> None:
    # 60 fitted devices: more than the 16 experts the fold-in scores exactly (it keeps the best by a cheap fit).
    rows, cols, values, truth, x = synthetic(n_rows=60, fill=0.5, seed=3)
    model = CFModel(rank=4, iterations=15).fit(rows, cols, values, 60, 150, col_features=x)
    new_truth = 0.3 + truth[47]
    revealed = np.array([4, 40, 77, 101, 133])
    new = model.fold_in_row(revealed, np.exp(new_truth[revealed]))
    error = np.sqrt(np.mean((model.predict(np.full(150, new), np.arange(150), log=True) - new_truth) ** 2))
    baseline = np.sqrt(np.mean((_isotropic_ridge_fold_in(model, revealed, new_truth[revealed]) - new_truth) ** 2))
    assert error < 0.05 and error < 0.2 * baseline


def test_row_counts_scales_and_noise_track_fit_fold_in_and_refit() -> None:
    rows, cols, values, truth, x = synthetic(fill=0.5)
    model = CFModel(rank=3, iterations=10).fit(rows, cols, values, 20, 150, col_features=x)
    np.testing.assert_array_equal(model.row_counts, np.bincount(rows, minlength=20))
    np.testing.assert_array_equal(model.row_scales, np.ones(20))
    assert 0 < model.noise_var < 0.01
    revealed = np.arange(0, 150, 10)
    new_values = np.exp(0.3 + 1.4 * truth[5, revealed])
    new = model.fold_in_row(revealed, new_values)
    assert model.row_counts[new] == 0 and model.row_scales[new] != 1.0
    # The same entries again give the same row: folded-in rows are not part of the fold-in prior.
    again = model.fold_in_row(revealed, new_values)
    assert model.row_biases[again] == model.row_biases[new] and model.row_scales[again] == model.row_scales[new]
    model.refit(
        np.r_[rows, np.full(revealed.size, new)],
        np.r_[cols, revealed],
        np.r_[values, new_values],
        n_rows=22,
        iterations=2,
    )
    assert model.row_counts[new] == revealed.size and model.row_counts[again] == 0
    np.testing.assert_array_equal(model.row_scales, np.ones(22))  # ALS rows have g = 1


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_older_model_files_still_load(tmp_path, version: int) -> None:
    """Format 4 had no checksum at the end; format 3 also no additive features at the end; formats 1 and 2 also no
    kernel_residual flag after init_scale and no kernel residuals at the end; format 1 also no row scales, row counts
    or noise variance after the row parameters."""
    rows, cols, values, truth, x = synthetic()
    model = CFModel(rank=3, iterations=5, kernel_residual=False).fit(rows, cols, values, *truth.shape, col_features=x)
    model.save(tmp_path / "v5.cfm")
    blob = (tmp_path / "v5.cfm").read_bytes()
    flag = 8 + 4 + 4 + 5 * 8 + 4 + 8 + 4 + 8  # magic .. init_scale
    n_rows, d = truth.shape[0], 3 + 1
    rows_end = flag + 1 + 3 * 8 + 8 + 8 + 8 * n_rows * d  # .. n_rows, n_cols, n_features, mu, row parameters
    extra = 2 * (8 + 8 * n_rows) + 8  # row scales, row counts, noise variance
    additive = 3 * 8 + n_rows * 8  # their count, two empty arrays, an empty array per row (lengths)
    kernels = n_rows * 4 * 8  # per row: four empty arrays (their lengths)
    assert blob[8:12] == (5).to_bytes(4, "little") and blob[flag] == 0
    blob = blob[:8] + version.to_bytes(4, "little") + blob[12:-8]  # no checksum
    if version < 4:
        blob = blob[:-additive]
    if version < 3:
        old = blob[:flag] + blob[flag + 1 : rows_end]
        blob = old + blob[rows_end + (extra if version == 1 else 0) : -kernels]
    (tmp_path / "old.cfm").write_bytes(blob)
    back = CFModel.load(tmp_path / "old.cfm")
    np.testing.assert_array_equal(back.predict(rows, cols), model.predict(rows, cols))
    assert back.get_params() == model.get_params()  # kernel_residual=False: refits behave as before
    assert back.n_additive == 0
    if version == 1:
        np.testing.assert_array_equal(back.row_scales, np.ones(n_rows))
    assert back.fold_in_row([0, 7], [1.0, 2.0]) == n_rows


def test_add_cols_and_refit() -> None:
    rows, cols, values, truth, x = synthetic(fill=0.5)
    keep = cols < 100
    model = CFModel(rank=4, iterations=10).fit(rows[keep], cols[keep], values[keep], 20, 100, col_features=x[:100])
    assert model.add_cols(50, x[100:]) == 100
    assert model.n_cols == 150
    r, c = all_entries((20, 150))
    cold_error = log_rmse(model, truth, r[c >= 100], c[c >= 100])
    assert cold_error < 0.2
    model.refit(rows, cols, values, iterations=3)  # now columns 100.. are measured too
    assert log_rmse(model, truth, r[c >= 100], c[c >= 100]) < cold_error


def test_save_load_round_trip(tmp_path) -> None:
    rows, cols, values, truth, x = synthetic()
    model = CFModel(rank=3, iterations=5).fit(rows, cols, values, *truth.shape, col_features=x)
    model.save(tmp_path / "m.cfm")
    back = CFModel.load(tmp_path / "m.cfm")
    np.testing.assert_array_equal(back.predict(rows, cols), model.predict(rows, cols))
    assert back.get_params() == model.get_params()
    with pytest.raises(OSError):
        CFModel.load(tmp_path / "missing.cfm")
    (tmp_path / "bad.cfm").write_bytes(b"garbage")
    with pytest.raises(cf_cpp.ModelFileError):
        CFModel.load(tmp_path / "bad.cfm")


def test_load_rejects_damaged_files_as_model_file_errors(tmp_path) -> None:
    rows, cols, values, truth, x = synthetic()
    CFModel(rank=3, iterations=5).fit(rows, cols, values, *truth.shape, col_features=x).save(tmp_path / "m.cfm")
    blob = (tmp_path / "m.cfm").read_bytes()
    reg = 8 + 4 + 4  # magic, version, rank
    first = 81 + 4 * 8 + 8  # .. kernel_residual flag, n_rows, n_cols, n_features, mu, length: the first row's bias

    def patched(at: int, new: bytes) -> bytes:
        return blob[:at] + new + blob[at + len(new) :]

    def patched_in(data: bytes, changes: dict[int, bytes]) -> bytes:
        for at, new in changes.items():
            data = data[:at] + new + data[at + len(new) :]
        return data

    damaged = {
        "trailing bytes": blob + b"junk",
        "a negative ridge (the model rejects it: an InvalidInputError before)": patched(reg, np.float64(-1).tobytes()),
        "a flipped bit in a row parameter (only the checksum sees it)": patched(first, bytes([blob[first] ^ 1])),
    }
    # format 4 has no checksum: a mean and a row bias of 1.5e308, each finite, predicted inf (one line per format)
    v4 = blob[:8] + (4).to_bytes(4, "little") + blob[12:-8]
    big = np.float64(1.5e308).tobytes()
    damaged["finite values whose prediction overflows (format 4)"] = patched_in(v4, {first - 16: big, first: big})
    for what, data in damaged.items():
        (tmp_path / "bad.cfm").write_bytes(data)
        with pytest.raises(cf_cpp.ModelFileError):
            CFModel.load(tmp_path / "bad.cfm")
            pytest.fail(f"loaded a file with {what}")


def test_a_failed_save_keeps_the_previous_file(tmp_path) -> None:
    rows, cols, values, truth, x = synthetic()
    model = CFModel(rank=3, iterations=5).fit(rows, cols, values, *truth.shape, col_features=x)
    model.save(tmp_path / "m.cfm")
    before = (tmp_path / "m.cfm").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))  # stands in for a full disk
    try:
        with pytest.raises(cf_cpp.ModelFileError, match="previous file"):
            model.save(tmp_path / "m.cfm")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert (tmp_path / "m.cfm").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cfm"]  # no temporary file left
    with pytest.raises(ValueError, match="NUL"):
        model.save(str(tmp_path / "m\0.cfm"))


def test_save_writes_through_a_link_and_long_names_save(tmp_path) -> None:
    """Saving through a symbolic link replaced the link with a regular file and left its target stale; a legal name
    near the 255-byte limit failed (the temporary file's name was the target's plus a suffix)."""
    rows, cols, values, truth, x = synthetic()
    model = CFModel(rank=3, iterations=5).fit(rows, cols, values, *truth.shape, col_features=x)
    (tmp_path / "v1.cfm").write_bytes(b"old")
    (tmp_path / "current.cfm").symlink_to("v1.cfm")
    model.save(tmp_path / "current.cfm")
    assert (tmp_path / "current.cfm").is_symlink()
    np.testing.assert_array_equal(CFModel.load(tmp_path / "v1.cfm").predict(rows, cols), model.predict(rows, cols))
    long_name = tmp_path / ("m" * 250 + ".cfm")
    model.save(long_name)
    assert CFModel.load(long_name).n_rows == model.n_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["v1.cfm", "current.cfm", long_name.name])


def test_load_refuses_what_is_not_a_regular_file(tmp_path) -> None:
    """A FIFO blocked load() for good; a directory is no model file either."""
    import os

    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", tmp_path):
        with pytest.raises(cf_cpp.ModelFileError, match="not a regular file"):
            CFModel.load(path)


def test_a_fit_that_diverges_raises_and_keeps_the_model() -> None:
    """init_scale=1e200 (finite, accepted) gave NaN parameters: a fit that succeeded, predicted NaN and saved a file
    that would not load. The fit now raises."""
    rows, cols, values, truth, _ = synthetic()
    with pytest.raises(ValueError, match="diverged"):
        CFModel(rank=3, iterations=5, init_scale=1e200).fit(rows, cols, values, *truth.shape)


def test_out_of_range_integers_and_numpy_bools_are_value_errors_or_taken() -> None:
    """Integers past the C++ types gave nanobind's TypeError with a signature dump, numpy bools were refused."""
    args = ([0, 1], [0, 1], [1.0, 2.0])
    for make in (lambda: CFModel(rank=2**31), lambda: CFModel(iterations=2**40), lambda: CFModel(seed=-1),
                 lambda: CFModel(rank=1).fit(*args, n_rows=2**63, n_cols=2)):  # fmt: skip
        with pytest.raises(ValueError, match="out of range"):
            make()
    model = CFModel(rank=1, iterations=2, kernel_residual=np.bool_(False)).fit(*args, n_rows=2, n_cols=2)
    with pytest.raises(ValueError, match="out of range"):
        model.add_cols(2**63)
    assert model.predict([0], [0], log=np.bool_(True)) == pytest.approx(np.log(model.predict([0], [0])))
    for flag in (True, np.bool_(True)):  # n_rows=True was taken for 1: "rows[1] = 1 is out of range [0, 1)" (review)
        with pytest.raises(TypeError, match="n_rows must be an integer, got"):
            CFModel(rank=1).fit(*args, n_rows=flag, n_cols=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": [1.0, -2.0]}, "must be finite and > 0"),
        ({"values": [1.0, 0.0]}, "must be finite and > 0"),
        ({"values": [1.0, np.inf]}, "must be finite and > 0"),
        ({"values": [1.0, np.nan]}, "must be finite and > 0"),
        ({"values": [1.0, -1e-9]}, r"values\[1\] = -1e-09 must be"),
        ({"rows": np.array([0, 2**63 + 1], dtype=np.uint64)}, r"rows\[1\] = 9223372036854775809 is out of range"),
        ({"n_cols": 2**62}, r"n_rows and n_cols must be in \[1, 1099511627776\]"),
        ({"rows": [0, 5]}, "out of range"),
        ({"cols": [-1, 0]}, "out of range"),
        ({"values": [1.0]}, "same length"),
        ({"rows": [[0, 1]]}, "1-D"),
        ({"rows": [0.0, 1.0]}, "integers"),
        ({"col_features": np.ones((3, 2))}, "expected n_cols"),
        ({"col_features": np.ones(2)}, "2-D"),
        ({"col_features": np.array([[np.nan], [1.0]])}, "finite"),
        ({"additive_features": np.ones((3, 2))}, "additive_features has 3 rows"),
        ({"additive_features": np.ones(2)}, "additive_features must be 2-D"),
        ({"additive_features": np.array([[1.0], [-1.0]])}, ">= 0"),
        ({"additive_features": np.array([[np.inf], [1.0]])}, "finite"),
    ],
)
def test_invalid_input_raises_value_error(kwargs: dict, message: str) -> None:
    args = {"rows": [0, 1], "cols": [0, 1], "values": [1.0, 2.0], "n_rows": 2, "n_cols": 2, "col_features": None}
    args |= {"additive_features": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        CFModel(rank=1, iterations=2).fit(**args)


@pytest.mark.parametrize("bad", [6.9, 2.0, "2", None])
def test_integer_arguments_are_not_coerced(bad) -> None:
    args = ([0, 1], [0, 1], [1.0, 2.0])
    with pytest.raises(TypeError, match="n_rows must be an integer"):
        CFModel(rank=1).fit(*args, n_rows=bad, n_cols=2)
    if bad is not None:  # refit: None = unchanged
        model = CFModel(rank=1, iterations=2).fit(*args, n_rows=2, n_cols=2)
        with pytest.raises(TypeError, match="n_cols must be an integer"):
            model.refit(*args, n_cols=bad)
        with pytest.raises(TypeError, match="iterations must be an integer"):
            model.refit(*args, iterations=bad)
        with pytest.raises(TypeError, match="n must be an integer"):
            model.add_cols(bad)


def test_refit_arguments_are_checked() -> None:
    args = ([0, 1], [0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="unfitted model fits from scratch: it needs n_rows and n_cols"):
        CFModel(rank=1).refit(*args)
    model = CFModel(rank=1, iterations=2).fit(*args, n_rows=np.int64(2), n_cols=2)
    with pytest.raises(ValueError, match="iterations must be >= 0, got -3"):
        model.refit(*args, iterations=-3)
    assert model.refit(*args, n_rows=np.int32(3), iterations=0).n_rows == 3


def test_huge_features_are_standardised_or_rejected() -> None:
    rows, cols, values, truth, x = synthetic()
    x = x.copy()
    x[:, 1] = 1e308  # a constant: dropped (its plain mean overflowed: NaN predictions)
    x[:, 2] *= 1e300
    model = CFModel(rank=3, iterations=5).fit(rows, cols, values, *truth.shape, col_features=x)
    assert np.isfinite(model.predict_matrix(log=True)).all()
    with pytest.raises(ValueError, match="too far from the fitted columns' features"):
        model.add_cols(1, np.full((1, 3), 1e308))
    assert model.n_cols == truth.shape[1]


def test_unfitted_and_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        CFModel().predict([0], [0])
    with pytest.raises(ValueError, match="rank"):
        CFModel(rank=-1)
    with pytest.raises(ValueError, match="rank must be in"):
        CFModel(rank=2**31 - 1)
    model = CFModel(rank=1, iterations=2).fit([0, 1], [0, 1], [1.0, 2.0], 2, 2)
    with pytest.raises(ValueError, match="out of range"):
        model.predict([0], [2])
    with pytest.raises(ValueError, match="out of range"):
        model.fold_in_row([7], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        model.fold_in_row([0], [-1.0])


def test_public_surface() -> None:
    assert sorted(cf_cpp.__all__) == ["CFModel", "InvalidInputError", "ModelFileError"]
    assert issubclass(cf_cpp.InvalidInputError, ValueError)
    assert issubclass(cf_cpp.ModelFileError, OSError)
    assert "fold_in_row" in cf_cpp.__doc__


def test_fit_releases_the_gil() -> None:
    """This thread counts while another fits (350,000-580,000 ticks here). A call holding the GIL lets it count only
    while the other thread starts: 11,000-16,000 ticks with the switch interval cut to 10 us, some 30,000 at the
    default 5 ms, where the old threshold of 1,000 could not fail (test-quality audit)."""
    import threading

    rng = np.random.default_rng(0)
    n = 200_000
    rows, cols = rng.integers(0, 300, n), rng.integers(0, 3000, n)
    values = np.exp(rng.standard_normal(n))
    model = CFModel(rank=8, iterations=10, threads=1)
    worker = threading.Thread(target=model.fit, args=(rows, cols, values, 300, 3000))
    ticks = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        worker.start()
        while worker.is_alive():
            ticks += 1  # only advances while the fit runs without holding the GIL
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert model.is_fitted
    assert ticks > 100_000, ticks


_OVERLAPPING_CALLS = """
import threading, time
import numpy as np
from cf_cpp import CFModel

rng = np.random.default_rng(0)
nr, nc = 60, 200
r, c = np.nonzero(rng.random((nr, nc)) < 0.3)
v = np.exp(rng.normal(size=r.size))
f = rng.normal(size=(nc, 3))
m = CFModel(rank=3, iterations=2, threads=1).fit(r, c, v, nr, nc, col_features=f)
pr, pc = rng.integers(0, nr, 2000), rng.integers(0, nc, 2000)
calls = {
    "predict": lambda: m.predict(pr, pc),
    "predict_matrix": lambda: m.predict_matrix(),
    "fold_in_row": lambda: m.fold_in_row(pc[:10], np.ones(10)),
    "add_cols": lambda: m.add_cols(1, np.ones((1, 3))),
    "fit": lambda: m.fit(r, c, v, nr, nc, col_features=f),
    "refit": lambda: m.refit(r, c, v, n_rows=nr, n_cols=nc, iterations=1),
    "properties": lambda: (m.row_factors, m.col_factors, m.row_residuals, m.row_scales, m.additive_rows),
}
errors = []
for pair in [("fold_in_row", "predict"), ("add_cols", "predict_matrix"), ("fit", "predict"),
             ("refit", "fold_in_row"), ("add_cols", "fold_in_row"), ("fold_in_row", "properties")]:
    stop = time.monotonic() + 0.3
    def loop(name):
        while time.monotonic() < stop:
            try:
                calls[name]()
            except ValueError as e:  # e.g. refit cannot shrink the model the other thread grew: raised, fine
                errors.append(type(e).__name__)
    threads = [threading.Thread(target=loop, args=(name,)) for name in pair]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
assert np.isfinite(m.predict_matrix()).all()
# The caller's index array changes while fit runs without the GIL (validated, then used out of bounds before).
rows = np.repeat(np.arange(500), 20)
cols = rng.integers(0, 50, rows.size)
vals = np.exp(rng.normal(size=rows.size))
flipping = True
def flip():
    while flipping:
        cols[-1] = 10**12
        cols[-1] = 0
t = threading.Thread(target=flip)
t.start()
for _ in range(100):
    try:
        CFModel(rank=2, iterations=0, threads=1, kernel_residual=False).fit(rows, cols, vals, 500, 50)
    except ValueError:
        pass
flipping = False
t.join()
print("survived", sorted(set(errors)))
"""


def test_overlapping_calls_on_one_model_raise_or_complete() -> None:
    """Calls release the GIL: misuse (unserialised calls that change the model, arrays written during a call) must
    wait or raise, never crash. In a subprocess, so that a crash fails this test instead of killing pytest."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_OVERLAPPING_CALLS)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"died with {out.returncode}: {out.stderr[-2000:]}"
    assert "survived" in out.stdout


def with_interaction(seed: int = 0):
    """synthetic() at fill 0.5 plus, on rows 0-4, a pairwise interaction of two column features (which neither the
    linear feature prior nor the rank-2 factors can express): what the kernel residuals are for."""
    rows, cols, _, truth, x = synthetic(fill=0.5, seed=seed)
    truth = truth.copy()
    truth[:5] += 0.4 * x[:, 0] * x[:, 1]
    return rows, cols, np.exp(truth[rows, cols]), truth, x


def test_kernel_residual_learns_what_the_factors_miss() -> None:
    rows, cols, values, truth, x = with_interaction()
    seen = np.zeros(truth.shape, dtype=bool)
    seen[rows, cols] = True
    r, c = np.nonzero(~seen)
    on = CFModel(rank=2, iterations=15).fit(rows, cols, values, *truth.shape, col_features=x)
    off = CFModel(rank=2, iterations=15, kernel_residual=False).fit(rows, cols, values, *truth.shape, col_features=x)
    odd = r < 5
    assert log_rmse(on, truth, r[odd], c[odd]) < 0.6 * log_rmse(off, truth, r[odd], c[odd])
    assert np.abs(on.row_residuals[:5]).max() > 0.2
    np.testing.assert_array_equal(off.row_residuals, np.zeros(truth.shape))
    # Without features there is nothing to regress on.
    plain = CFModel(rank=2, iterations=15).fit(rows, cols, values, *truth.shape)
    np.testing.assert_array_equal(plain.row_residuals, np.zeros(truth.shape))


def test_fold_in_takes_its_experts_kernel_residual() -> None:
    rows, cols, values, truth, x = with_interaction()
    n_rows, n_cols = truth.shape
    revealed = np.arange(0, n_cols, 15)  # 10 entries of a new device that is row 2 slowed down by 30%
    new_values = 1.3 * np.exp(truth[2, revealed])
    unseen = np.setdiff1d(np.arange(n_cols), revealed)
    errors = {}
    for kernel in (True, False):
        model = CFModel(rank=2, iterations=15, kernel_residual=kernel).fit(rows, cols, values, n_rows, n_cols, x)
        new = model.fold_in_row(revealed, new_values)
        pred = model.predict(np.full(unseen.size, new), unseen, log=True)
        errors[kernel] = np.sqrt(np.mean((pred - np.log(1.3) - truth[2, unseen]) ** 2))
        if kernel:
            assert np.abs(model.row_residuals[new]).max() > 0.2
    assert errors[True] < 0.6 * errors[False]


def test_kernel_residuals_survive_save_load_and_reach_added_columns(tmp_path) -> None:
    rows, cols, values, truth, x = with_interaction()
    keep = cols < 120
    model = CFModel(rank=2, iterations=15).fit(rows[keep], cols[keep], values[keep], 20, 120, col_features=x[:120])
    folded = model.fold_in_row([0, 10, 20, 30, 40], np.exp(truth[1, [0, 10, 20, 30, 40]]))
    model.save(tmp_path / "m.cfm")
    back = CFModel.load(tmp_path / "m.cfm")
    r, c = all_entries((21, 120))
    np.testing.assert_array_equal(back.predict(r, c), model.predict(r, c))
    np.testing.assert_array_equal(back.row_residuals, model.row_residuals)
    assert back.get_params()["kernel_residual"] is True
    # Columns added later get each row's residual from their features: the interaction, up to its share that the
    # factors took. A folded-in row gets its experts'.
    back.add_cols(30, x[120:])
    truth_pair = x[120:, 0] * x[120:, 1]
    for row in (0, folded):
        assert np.corrcoef(back.row_residuals[row, 120:], truth_pair)[0, 1] > 0.9
    # add_cols evaluates only the new columns; a load evaluates every column: the same table, column parameters and
    # predictions.
    back.save(tmp_path / "m2.cfm")
    again = CFModel.load(tmp_path / "m2.cfm")
    np.testing.assert_array_equal(again.row_residuals, back.row_residuals)
    np.testing.assert_array_equal(again.col_factors, back.col_factors)
    np.testing.assert_array_equal(again.col_biases, back.col_biases)
    r, c = all_entries((21, 150))
    np.testing.assert_array_equal(again.predict(r, c), back.predict(r, c))


def test_an_additive_device_folds_in_as_the_sum_of_its_op_counts(tmp_path) -> None:
    """A device whose latency is a sum of per-op costs, unlike every fitted device, gets an additive row; a device
    like the fitted ones does not; both survive save / load, and a refit makes every row a fitted one again."""
    rows, cols, values, truth, x = synthetic(seed=5)
    counts = np.random.default_rng(6).integers(0, 6, size=(x.shape[0], 4)).astype(float)
    model = CFModel(rank=2, iterations=10).fit(rows, cols, values, 20, 150, x, additive_features=counts)
    assert model.n_additive == 4
    costs = 1.0 + counts @ np.array([0.5, 2.0, 0.1, 1.2])
    shown = np.arange(12)
    additive = model.fold_in_row(shown, costs[shown])
    alike = model.fold_in_row(shown, 1.2 * np.exp(truth[3, shown]))
    assert model.additive_rows.tolist() == [additive]
    np.testing.assert_allclose(model.predict(np.full(150, additive), np.arange(150)), costs, rtol=1e-3)
    alike_log = model.predict(np.full(150, alike), np.arange(150), log=True)
    assert np.sqrt(np.mean((alike_log - truth[3] - np.log(1.2)) ** 2)) < 0.1

    model.save(tmp_path / "m.cfm")
    loaded = CFModel.load(tmp_path / "m.cfm")
    np.testing.assert_array_equal(loaded.predict_matrix(), model.predict_matrix())
    assert loaded.additive_rows.tolist() == [additive]

    with pytest.raises(ValueError, match="uses additive_features"):
        model.add_cols(1, np.zeros((1, 3)))
    assert model.n_cols == 150
    first = model.add_cols(1, np.zeros((1, 3)), additive_features=[[1.0, 0.0, 0.0, 2.0]])
    assert model.predict([additive], [first])[0] == pytest.approx(1.0 + 0.5 + 2 * 1.2, rel=1e-3)

    model.refit(rows, cols, values, n_rows=22, n_cols=151, iterations=2)
    assert model.additive_rows.size == 0


_FOLD_IN_OUT_OF_MEMORY = """
import resource
import numpy as np
from cf_cpp import CFModel

rng = np.random.default_rng(0)
n_rows, n_cols, n_cold = 30, 300, 300_000
x = rng.standard_normal((n_cols + n_cold, 3))
truth = 0.5 * rng.standard_normal(n_rows)[:, None] + (1 + 0.8 * x[:n_cols, 0]) + 0.6 * x[:n_cols, 0] * x[:n_cols, 1]
r, c = np.nonzero(rng.random((n_rows, n_cols)) < 0.6)
v = np.exp(truth[r, c] + 0.01 * rng.standard_normal(r.size))
model = CFModel(rank=2, iterations=5, threads=1).fit(r, c, v, n_rows, n_cols + n_cold, col_features=x)
reference = CFModel(rank=2, iterations=5, threads=1).fit(r, c, v, n_rows, n_cols + n_cold, col_features=x)
assert np.abs(model.row_residuals[:, :5]).sum() > 0  # a residual table: each new row adds n_cols values to it
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (size + 40 * 2**20, hard))  # room for small things, not for a larger table
try:
    model.fold_in_row(np.arange(10), np.full(10, 1e-3))
    failed = False
except MemoryError:
    failed = True
finally:
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
row = model.fold_in_row(np.arange(10), np.full(10, 1e3))
want = reference.predict([reference.fold_in_row(np.arange(10), np.full(10, 1e3))] * 3, [0, 1, 2])
print(failed, row, model.row_scales.size, model.n_rows, np.array_equal(model.predict([row] * 3, [0, 1, 2]), want))
"""


def test_a_fold_in_that_runs_out_of_memory_changes_nothing() -> None:
    """A fold-in that ran out of memory had appended the new row to every per-row array but the residual table: the
    next fold-in got the failed row's parameters (a device 1000x slower predicted 1000x faster), and a model saved
    then did not load (found by review). In a subprocess: it lowers its own address-space limit."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FOLD_IN_OUT_OF_MEMORY)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "30", "31", "31", "True"]


def test_reading_a_model_that_another_thread_fits_releases_the_gil() -> None:
    """A property read waits for the model's lock while a fit holds it: it held the GIL meanwhile, and the whole
    interpreter stood still for the rest of the fit (found by review). Reads are made one after another until the fit
    ends, so that one of them waits for its lock whenever the fit takes it (a sleep was to wait for that). The switch
    interval is cut to 10 us: a read holding the GIL then stops this thread's count within some hundred ticks (at the
    default 5 ms it still counted some 30,000 first)."""
    import threading

    rng = np.random.default_rng(0)
    n = 200_000
    rows, cols = rng.integers(0, 300, n), rng.integers(0, 3000, n)
    values = np.exp(rng.standard_normal(n))
    model = CFModel(rank=8, iterations=10, threads=1).fit(rows[:10], cols[:10], values[:10], 300, 3000)
    fitting = threading.Thread(target=model.fit, args=(rows, cols, values, 300, 3000))
    reads: list[object] = []
    most_ticks = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        fitting.start()
        while fitting.is_alive():
            reads.clear()
            reading = threading.Thread(target=lambda: reads.extend([model.n_rows, model.row_factors, repr(model)]))
            reading.start()
            ticks = 0
            while reading.is_alive():
                ticks += 1  # advances only while the waiting read does not hold the GIL
            most_ticks = max(most_ticks, ticks)
        fitting.join()
    finally:
        sys.setswitchinterval(interval)
    assert reads[0] == 300 and reads[1].shape == (300, 8)
    assert most_ticks > 10_000, most_ticks


def test_refit_of_unchanged_size_is_not_raced_by_a_fold_in() -> None:
    """refit() without n_rows read the row count before it took the model's lock: a fold-in in another thread in
    between made it "refit cannot shrink the model" (25 in 13,476 refits, found by review)."""
    import threading
    import time

    rows, cols, values, truth, _ = synthetic(20, 60)
    model = CFModel(rank=2, iterations=1, threads=1).fit(rows, cols, values, *truth.shape)
    errors: list[str] = []
    stop = time.monotonic() + 1.0

    def fold_in() -> None:
        while time.monotonic() < stop:
            model.fold_in_row([0, 1, 2], [1.0, 2.0, 3.0])

    def refit() -> None:
        while time.monotonic() < stop:
            try:
                model.refit(rows, cols, values, iterations=0)
            except ValueError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=fold_in), threading.Thread(target=refit)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with pytest.raises(ValueError, match="n_rows and n_cols must be >= 0"):
        model.refit(rows, cols, values, n_rows=-1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"reg": None}, TypeError, "reg must be a real number, got NoneType"),
        ({"reg_col": "1"}, TypeError, "reg_col must be a real number, got str"),
        ({"init_scale": 1 + 0j}, TypeError, "init_scale must be a real number"),
        ({"reg_bias": 10**400}, ValueError, "reg_bias = 1000"),
        ({"reg_features": True}, TypeError, "reg_features must be a real number, got bool"),
        ({"kernel_residual": "no"}, TypeError, "kernel_residual must be True or False"),
    ],
)
def test_hyperparameters_of_the_wrong_type_are_named(kwargs: dict, error: type, message: str) -> None:
    """They got nanobind's dump of every constructor signature; kernel_residual="no" meant yes (found by review)."""
    with pytest.raises(error, match=message):
        CFModel(**kwargs)


def test_log_takes_a_bool_and_paths_may_be_bytes(tmp_path) -> None:
    rows, cols, values, truth, _ = synthetic(10, 30)
    model = CFModel(rank=2, iterations=2).fit(rows, cols, values, *truth.shape)
    with pytest.raises(TypeError, match="log must be True or False"):
        model.predict([0], [0], log="no")
    path = bytes(tmp_path / "m.cfm")
    model.save(path)
    np.testing.assert_array_equal(CFModel.load(path).predict([0], [0]), model.predict([0], [0]))
    with pytest.raises(cf_cpp.ModelFileError, match="No such file or directory"):
        CFModel.load(tmp_path / "missing.cfm")


def test_copies_and_pickles_are_models_of_their_own() -> None:
    """copy.copy shared the C++ model (fitting the copy changed the original) and pickle raised (found by review)."""
    import copy
    import pickle

    rows, cols, values, truth, x = synthetic(10, 30)
    model = CFModel(rank=2, iterations=2, seed=3).fit(rows, cols, values, *truth.shape, col_features=x)
    before = model.predict_matrix()
    for twin in (copy.copy(model), copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(twin.predict_matrix(), before)
        assert twin.get_params() == model.get_params()
        twin.fold_in_row([0, 1], [1.0, 2.0])
        twin.fit(rows, cols, values * 3, *truth.shape, col_features=x)
        assert model.n_rows == truth.shape[0]
        np.testing.assert_array_equal(model.predict_matrix(), before)
    unfitted = pickle.loads(pickle.dumps(CFModel(rank=5)))
    assert not unfitted.is_fitted and unfitted.rank == 5


_SIZES_OUT_OF_MEMORY = """
import resource
from cf_cpp import CFModel

size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 500 * 2**20, resource.RLIM_INFINITY))
model = CFModel(rank=4, iterations=1, threads=1)
calls = (lambda: model.fit([0], [0], [1.0], 20_000_000, 60), lambda: model.fit([0], [0], [1.0], 2, 2).add_cols(2**33))
for call in calls:
    try:
        call()
    except MemoryError as e:
        print(e)
"""


def test_sizes_past_the_memory_say_what_ran_out() -> None:
    """A fit of 20 million rows, or add_cols(2**33), within the size limits (2**40) but past the machine's memory,
    was a bare MemoryError('std::bad_alloc') (found by review). In a subprocess: it lowers its own memory limit."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SIZES_OUT_OF_MEMORY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [
        "fit of 20000000 rows x 60 columns: out of memory",
        "add_cols of 8589934592 columns: out of memory",
    ]
