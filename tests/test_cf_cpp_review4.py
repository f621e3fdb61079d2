"""cf_cpp review 4: what load spends on a small file's kernel residuals, the column-feature limit, features in small
units, additive features whose squares overflow, and refit(iterations=0) of new columns."""

from __future__ import annotations

import copy
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from cf_cpp import CFModel, InvalidInputError, ModelFileError


def vec(a, dtype: str = "<f8") -> bytes:
    a = np.ascontiguousarray(a, dtype=dtype)
    return struct.pack("<Q", a.size) + a.tobytes()


def one_cell_file(n_features: int, kernel_entries: int) -> bytes:
    """A format 4 model file (no checksum; src/serialize.cpp) of rank 0, 1 row x 1 column with n_features column
    features, whose row has a kernel expansion of kernel_entries entries (all at column 0): O(n_features +
    kernel_entries) bytes, every value finite, a residual table of 1 entry."""
    empty = struct.pack("<Q", 0)
    config = struct.pack("<Ii5diQid?", 4, 0, 0.3, 0.01, 3.0, 3.0, 1.0, 20, 0, 1, 0.1, True)  # version 4, rank 0
    head = b"CFCPPMF\0" + config + struct.pack("<qqqd", 1, 1, n_features, 0.0)
    rows = vec(np.zeros(1)) + vec(np.ones(1)) + vec(np.ones(1), "<i8") + struct.pack("<d", 0.01)
    x = np.r_[np.full(n_features, 0.5), 1.0]
    features = vec(x) + vec(np.zeros(n_features)) + vec(np.ones(n_features)) + vec(np.zeros(n_features + 1))
    cols = vec(np.zeros(1)) + features + vec(np.ones(1), "<i8")
    if kernel_entries:
        kernel = vec(np.zeros(kernel_entries), "<i8") + vec(np.full(kernel_entries, 1e-9)) + 2 * empty
    else:
        kernel = 4 * empty
    return head + rows + cols + kernel + struct.pack("<q", 0) + 2 * empty + empty


def test_load_refuses_kernel_residuals_that_cost_far_more_than_the_file(tmp_path) -> None:
    """A 563 KB file of 12,000 features and a 12,000-entry expansion made load allocate 1.1 GB and do 1.7e12
    multiply-adds (half an hour, the GIL released) to fill a residual table of one entry. The work is bounded before
    anything is allocated (kMaxLoadedWork). In a subprocess: the old load cannot be stopped in C++; its timeout is
    far above the refusal's time."""
    path = tmp_path / "hostile.cfm"
    path.write_bytes(one_cell_file(12_000, 12_000))
    load = (
        "import sys\nfrom cf_cpp import CFModel, ModelFileError\n"
        "try:\n    CFModel.load(sys.argv[1]); print('loaded')\nexcept ModelFileError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", load, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "would cost 1.72814e+12 multiply-adds to fill" in out.stdout


def blend_file(n_rows: int, n_cols: int, experts: int) -> bytes:
    """A format 4 model file of rank 0 with one column feature: row 0 has a kernel residual, every other row blends
    row 0's `experts` times (a file may repeat an expert)."""
    empty = struct.pack("<Q", 0)
    config = struct.pack("<Ii5diQid?", 4, 0, 0.3, 0.01, 3.0, 3.0, 1.0, 20, 0, 1, 0.1, True)
    head = b"CFCPPMF\0" + config + struct.pack("<qqqd", n_rows, n_cols, 1, 0.0)
    rows = vec(np.zeros(n_rows)) + vec(np.ones(n_rows)) + vec(np.ones(n_rows), "<i8") + struct.pack("<d", 0.01)
    x = np.c_[np.linspace(-1, 1, n_cols), np.ones(n_cols)]
    cols = vec(np.zeros(n_cols)) + vec(x) + vec([0.0]) + vec([1.0]) + vec(np.zeros(2)) + vec(np.ones(n_cols), "<i8")
    blend = 2 * empty + vec(np.zeros(experts), "<i8") + vec(np.full(experts, 1e-6))
    per_row = vec([0], "<i8") + vec([1e-3]) + 2 * empty + (n_rows - 1) * blend
    return head + rows + cols + per_row + struct.pack("<q", 0) + 2 * empty + n_rows * empty


def test_load_counts_the_blends_of_folded_in_rows_in_that_work(tmp_path) -> None:
    """Each expert of a folded-in row adds a row of the table to its own: 2**20 of them over 2**15 columns, from a
    16 MB file, were 3.4e10 multiply-adds."""
    path = tmp_path / "blends.cfm"
    path.write_bytes(blend_file(2**10, 2**15, 2**10))
    with pytest.raises(ModelFileError, match="would cost 3.43.*e\\+10 multiply-adds"):
        CFModel.load(path)
    path.write_bytes(blend_file(4, 50, 3))  # within it: rows 1-3 are 3 x 1e-6 times row 0
    model = CFModel.load(path)
    np.testing.assert_allclose(model.row_residuals[1:], np.tile(3e-6 * model.row_residuals[0], (3, 1)))


def test_a_small_expansion_still_loads(tmp_path) -> None:
    """Below the bound the same kind of file loads: h = alpha k(x_0, x_0) = 1e-9 (1 + 0.25)^2 per entry."""
    path = tmp_path / "small.cfm"
    path.write_bytes(one_cell_file(30, 40))
    model = CFModel.load(path)
    assert model.row_residuals[0, 0] == pytest.approx(40 * 1e-9 * 1.25**2, rel=1e-12)


def test_column_features_are_limited_in_fit_and_in_a_file(tmp_path) -> None:
    """n_features was bounded only by the file's size (an int overflow past 2**31); fit ran out of memory (its
    per-row Grams: 8 TiB). Both now refuse more than kMaxFeatures = 2**20, naming it."""
    with pytest.raises(InvalidInputError, match="col_features has 1048577 columns: a model holds at most 1048576"):
        CFModel(rank=1, threads=1).fit([0, 0], [0, 1], [1.0, 2.0], 1, 2, col_features=np.ones((2, 2**20 + 1)))
    path = tmp_path / "wide.cfm"
    path.write_bytes(one_cell_file(2**20 + 1, 0))
    with pytest.raises(ModelFileError, match="1048577 column features: a model holds at most 1048576"):
        CFModel.load(path)


def cold_start(unit: float, constant: float | None = None) -> np.ndarray:
    """Cold-start predictions of columns 150..199 whose latency follows a feature (in `unit`; with an exactly
    constant second feature of value `constant`)."""
    rng = np.random.default_rng(0)
    nr, nc = 8, 200
    size = rng.uniform(1, 10, nc)
    r, c = (a.ravel() for a in np.indices((nr, nc)))
    v = size[c] * np.exp(rng.normal(size=nr)[r] + 0.02 * rng.normal(size=r.size))
    features = (size * unit)[:, None]
    if constant is not None:
        features = np.c_[features, np.full(nc, constant)]
    keep = c < 150
    model = CFModel(rank=2, threads=1).fit(r[keep], c[keep], v[keep], nr, nc, features)
    return model.predict(np.zeros(50, int), np.arange(150, 200))


def test_a_feature_in_small_units_is_not_dropped_as_constant() -> None:
    """A feature of values 1e-13..1e-12 (seconds, joules) was dropped: the constant test sd > 1e-12 (1 + |mean|) is
    absolute near 0, so every cold column got one prediction. The test is now relative to the feature's size: the
    same feature in any unit gives the same predictions (standardised, it is the same up to rounding)."""
    base = cold_start(1.0)
    assert np.ptp(np.log(base)) > 1.0  # the feature drives the cold-start prior
    np.testing.assert_allclose(cold_start(1e-13), base, rtol=1e-6)


def test_an_exactly_constant_feature_is_still_dropped() -> None:
    """Constant at 1e-13 or at 0 (its spread only the rounding of its mean, or none): dropped alike."""
    np.testing.assert_array_equal(cold_start(1.0, constant=1e-13 / 3), cold_start(1.0, constant=0.0))


def test_additive_features_whose_squares_overflow_save_and_copy(tmp_path) -> None:
    """Additive features of 1e160 are finite and >= 0, so fit took them; their root mean square overflowed to inf
    and save, pickle and deepcopy refused the model fit had built. It is now taken of the values over the largest."""
    rng = np.random.default_rng(0)
    r, c = (a.ravel() for a in np.indices((5, 30)))
    v = np.exp(rng.normal(size=r.size))
    add = np.c_[1e160 * rng.uniform(1, 2, 30), np.ones(30)]
    model = CFModel(rank=2, threads=1).fit(r, c, v, 5, 30, additive_features=add)
    model.save(tmp_path / "m.cfm")
    expected = model.predict_matrix()
    np.testing.assert_array_equal(CFModel.load(tmp_path / "m.cfm").predict_matrix(), expected)
    np.testing.assert_array_equal(copy.deepcopy(model).predict_matrix(), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_matrix(), expected)
    # A row that is the additive features' weighted sum folds in as one, at their scale.
    row = model.fold_in_row(np.arange(12), 3.0 * add[:12, 0] / 1e160 + 0.5)
    assert list(model.additive_rows) == [row]
    assert model.predict([row], [20])[0] == pytest.approx(3.0 * add[20, 0] / 1e160 + 0.5, rel=1e-3)


def test_refit_with_no_iterations_predicts_new_columns_from_their_prior() -> None:
    """refit(iterations=0) that grew the model left the new columns' deviations e_c at their random start: two
    identical unmeasured columns got different predictions, and without features a new column was not the plain
    biased MF's e_c = 0. Every column without observations now has e_c = 0, whatever the number of sweeps."""
    rng = np.random.default_rng(0)
    nr, nc = 6, 50
    feats = rng.normal(size=(nc + 2, 2))
    feats[nc + 1] = feats[nc]  # two new, identical cold columns
    r, c = (a.ravel() for a in np.indices((nr, nc)))
    v = np.exp(rng.normal(size=nr)[r] + feats[c] @ [0.5, -0.3] + 0.05 * rng.normal(size=r.size))
    with_features = CFModel(rank=4, threads=1, kernel_residual=False, init_scale=0.5).fit(r, c, v, nr, nc, feats[:nc])
    with_features.refit(r, c, v, n_cols=nc + 2, col_features=feats, iterations=0)
    first, second = with_features.predict([0, 0], [nc, nc + 1])
    assert first == second
    plain = CFModel(rank=4, threads=1, init_scale=0.5).fit(r, c, v, nr, nc)
    plain.refit(r, c, v, n_cols=nc + 2, iterations=0)
    assert np.all(plain.col_factors[nc:] == 0)
    assert np.all(plain.col_factors[:nc] != 0)  # the measured columns keep theirs
