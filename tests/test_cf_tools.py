"""cf_eval, its methods and the data-set converters on tiny inputs (fast)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cf_cpp")

from tools import cf_eval, cf_methods, cf_protocols, nb201_features  # noqa: E402
from tools.cf_data import load_csv, write_csv  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """12 rows x 60 cols, log = row bias + 1.5 f_a - 0.5 f_b + rank-1 term, 10% missing."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((60, 2))
    rb, p = rng.standard_normal(12), 0.3 * rng.standard_normal(12)
    logv = 2 + rb[:, None] + 1.5 * feats[:, 0] - 0.5 * feats[:, 1] + p[:, None] * feats[:, 1]
    m = np.exp(logv)
    m[rng.random(m.shape) < 0.1] = np.nan
    path = tmp_path / "small.csv"
    write_csv(path, m, [f"dev{i}" for i in range(12)], [f"blk{j}" for j in range(60)], feats, ["a", "b"])
    return path


def test_load_csv_round_trip(small_csv: Path) -> None:
    m = load_csv(small_csv)
    assert (m.n_rows, m.n_cols) == (12, 60)
    assert m.feature_names == ("f_a", "f_b")
    assert m.features is not None and m.features.shape == (60, 2)
    assert np.all(m.values > 0)
    assert 0.8 * 720 < m.size < 720


def test_csv_carries_additive_features(tmp_path: Path) -> None:
    counts = np.arange(6.0).reshape(3, 2)
    path = tmp_path / "additive.csv"
    write_csv(
        path, np.ones((2, 3)), ["d0", "d1"], ["c0", "c1", "c2"], np.ones((3, 1)), ["x"], counts, ["n_conv", "n_pool"]
    )
    m = load_csv(path)
    assert m.feature_names == ("f_x",) and m.additive_names == ("a_n_conv", "a_n_pool")
    np.testing.assert_array_equal(m.additive, counts)
    np.testing.assert_array_equal(m.features, np.ones((3, 1)))
    only = tmp_path / "only.csv"
    write_csv(only, np.ones((2, 3)), ["d0", "d1"], ["c0", "c1", "c2"], additive=counts, additive_names=["n", "m"])
    assert load_csv(only).features is None and load_csv(only).additive.shape == (3, 2)
    with pytest.raises(ValueError, match="column features have shape"):
        write_csv(only, np.ones((2, 3)), ["d0", "d1"], ["c0", "c1", "c2"], np.ones((2, 1)), ["x"])


def test_load_csv_rejects_missing_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("device,block,ms\na,b,1\n")
    with pytest.raises(ValueError, match="missing column"):
        load_csv(bad)


def test_metrics_definitions() -> None:
    r = cf_protocols.metrics(np.array([1.0, 1.05, 1.5, 2.0]), np.array([1.0, 1.0, 1.0, 1.0]))
    assert r["within10"] == pytest.approx(50.0)
    assert r["mape"] == pytest.approx(100 * (0 + 0.05 + 0.5 + 1.0) / 4)
    assert r["median_ape"] == pytest.approx(100 * 0.275)
    assert r["log_rmse"] == pytest.approx(np.sqrt(np.mean(np.log([1, 1.05, 1.5, 2.0]) ** 2)))


@pytest.mark.parametrize("protocol", ["random", "new-row", "cold-col"])
def test_cf_eval_json_shape(small_csv: Path, protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--csv", str(small_csv), "--protocol", protocol, "--fill", "0.5", "--seeds", "1", "--json"]
    assert cf_eval.main(argv + ["--reveal", "1,3,5"] if protocol == "new-row" else argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == protocol and report["fill"] == 0.5
    assert set(report["methods"]) == set(cf_methods.METHODS)
    for scores in report["methods"].values():
        assert set(scores) >= {"log_rmse", "mape", "median_ape", "within10", "fit_s"}
        assert 0 <= scores["within10"] <= 100
    if protocol == "new-row":
        assert set(report["by_revealed"]) == {"1", "3", "5"}


def test_new_row_split_holds_out_the_given_rows(small_csv: Path) -> None:
    m = load_csv(small_csv)
    held, train, remap, n_kept, order = cf_protocols.new_row_split(m, 0.5, 0, held=[3])
    assert held.tolist() == [3] and n_kept == m.n_rows - 1 and list(order) == [3]
    assert remap[3] == -1 and sorted(remap[remap >= 0]) == list(range(n_kept))
    assert not train[m.rows == 3].any() and train[m.rows != 3].any()
    assert sorted(order[3]) == np.flatnonzero(m.rows == 3).tolist()


def test_leave_one_out_folds_in_every_row_against_a_fit_without_it(
    small_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = load_csv(small_csv)
    fits: list[tuple[int, set[int]]] = []  # (rows in the fit, training cols seen) per fit
    folds: list[int] = []
    real_make = cf_methods.make

    class Spy:
        def __init__(self, name: str, seed: int) -> None:
            self._inner = real_make(name, seed)

        def fit(self, rows, cols, values, n_rows, n_cols, features=None, additive=None):
            fits.append((n_rows, set(np.unique(rows).tolist())))
            return self._inner.fit(rows, cols, values, n_rows, n_cols, features, additive)

        def fold_in(self, cols, values):
            folds.append(len(cols))
            return self._inner.fold_in(cols, values)

        def predict(self, rows, cols):
            return self._inner.predict(rows, cols)

    monkeypatch.setattr(cf_methods, "make", Spy)
    report = cf_eval.evaluate(m, "new-row", 0.5, 1, ("cf_cpp",), (1, 3), leave_one_out=True)
    assert report["leave_one_out"] is True
    assert [n for n, _ in fits] == [m.n_rows - 1] * m.n_rows  # one fit per row, that row left out
    assert all(seen == set(range(m.n_rows - 1)) for _, seen in fits)
    assert sorted(folds) == [1] * m.n_rows + [3] * m.n_rows  # every row folded in from 1 and from 3 entries
    assert 0 <= report["by_revealed"]["3"]["methods"]["cf_cpp"]["within10"] <= 100
    with pytest.raises(ValueError, match="new-row"):
        cf_eval.evaluate(m, "random", 0.5, 1, ("cf_cpp",), leave_one_out=True)


def test_cf_cpp_uses_features_where_they_explain_the_data(small_csv: Path) -> None:
    m = load_csv(small_csv)
    report = cf_eval.evaluate(m, "cold-col", 0.5, 1, ("cf_cpp", "mf_no_features", "biases_only"))
    assert report["methods"]["cf_cpp"]["log_rmse"] < 0.5 * report["methods"]["mf_no_features"]["log_rmse"]


def test_cf_eval_rejects_bad_arguments(small_csv: Path) -> None:
    with pytest.raises(SystemExit):
        cf_eval.main(["--csv", str(small_csv), "--fill", "0"])
    with pytest.raises(SystemExit):
        cf_eval.main(["--csv", str(small_csv), "--methods", "nope"])
    with pytest.raises(SystemExit):
        cf_eval.main(["--csv", str(small_csv), "--protocol", "random", "--leave-one-out"])
    assert cf_eval.main(["--csv", str(small_csv.parent / "missing.csv")]) == 2


def test_nb201_features() -> None:
    arch = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"
    f = nb201_features.features(arch)
    names = nb201_features.names()
    assert len(f) == len(names) == 64
    enc = dict(zip(names, f, strict=True))
    assert enc["enc_e0_nor_conv_3x3"] == 1 and enc["enc_e1_none"] == 1
    # node 1's conv feeds nothing that reaches the output (edges 1->2 and 1->3 are none): it is dead code
    assert enc["live_e0_nor_conv_3x3"] == 0 and enc["live_e3_skip_connect"] == 1
    assert len(nb201_features.features(arch, encoding_only=True)) == 30
    counts = dict(zip(nb201_features.additive_names(), nb201_features.op_counts(arch), strict=True))
    assert counts == {
        "count_none": 4,
        "count_skip_connect": 1,
        "count_nor_conv_1x1": 0,
        "count_nor_conv_3x3": 1,
        "count_avg_pool_3x3": 0,
    }
    with pytest.raises(ValueError):
        nb201_features.features("|foo~0|")


@pytest.mark.skipif(not (DATASETS / "deepbench").is_dir(), reason="shared datasets not present")
def test_converter_deepbench(tmp_path: Path) -> None:
    from tools import convert_datasets

    path = convert_datasets.convert("deepbench_gemm", DATASETS, tmp_path)
    m = load_csv(path)
    assert m.n_rows == 21 and m.n_cols == 254
    assert m.features is not None and m.features.shape[1] == 7
    assert m.additive is None
    # A cached CSV is reused, unless it is older than the converters' code.
    path.write_text("stale")
    assert convert_datasets.convert("deepbench_gemm", DATASETS, tmp_path).read_text() == "stale"
    os.utime(path, (0, 0))
    assert load_csv(convert_datasets.convert("deepbench_gemm", DATASETS, tmp_path)).n_cols == 254


def test_bench_cf_small_run(capsys: pytest.CaptureFixture[str]) -> None:
    from tools import bench_cf

    argv = ["--rows", "40", "--cols", "200", "--rank", "4", "--iterations", "10", "--repeats", "1", "--no-surprise"]
    assert bench_cf.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["targets"]) == {"fit_s", "fold_in_ms", "predict_1m_s"}
    assert out["cf_cpp"]["fit_no_sweeps_s"] > 0 and out["cf_cpp"]["fold_in_10_ms"] > 0  # the parts are timed
    # numpy ALS implements the same objective: same accuracy within a small tolerance
    assert out["cf_cpp"]["test_log_rmse"] == pytest.approx(out["numpy_als"]["test_log_rmse"], rel=0.1)
