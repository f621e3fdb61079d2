"""cf_cpp's fold-in against the numpy reference of its maths (tools/cf_fold_in_reference.py)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cf_cpp import CFModel
from tools import cf_eval, cf_fold_in_ceiling
from tools import cf_fold_in_reference as ref
from tools.cf_data import load_csv, write_csv
from tools.cf_protocols import new_row_split


def _noisy_devices(n_rows: int, n_cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log values of n_rows devices: feature-driven columns, a rank-3 interaction, a per-device pairwise feature
    interaction (what the kernel residuals capture), 5% noise; and the features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_cols, 4))
    col = 1.0 + 0.8 * x[:, 0] - 0.3 * x[:, 1]
    q = np.stack([0.5 * x[:, 1] + 0.2 * x[:, 2], 0.4 * x[:, 2], 0.3 * x[:, 3]], axis=1)
    p = 0.6 * rng.standard_normal((n_rows, 3))
    b = rng.standard_normal(n_rows)
    pair = 0.3 * rng.standard_normal(n_rows)[:, None] * (x[:, 0] * x[:, 1])
    return b[:, None] + col + p @ q.T + pair + 0.05 * rng.standard_normal((n_rows, n_cols)), x


@pytest.mark.parametrize("n_fitted", [6, 20])  # 20 > MAX_EXPERTS: the engine scores only the best 16 exactly
@pytest.mark.parametrize("n_revealed", [1, 3, 10, 40])
def test_engine_fold_in_matches_the_reference(n_fitted: int, n_revealed: int) -> None:
    n_cols = 120
    log_y, x = _noisy_devices(n_fitted + 3, n_cols, seed=n_fitted)
    rng = np.random.default_rng(1)
    rows, cols = np.nonzero(rng.random((n_fitted, n_cols)) < 0.4)
    model = CFModel(rank=4, iterations=10, seed=0).fit(rows, cols, np.exp(log_y[rows, cols]), n_fitted, n_cols, x)
    assert np.abs(model.row_residuals).max() > 0.05  # the kernel residuals take part
    everywhere = np.arange(n_cols)
    for new in range(n_fitted, n_fitted + 3):  # earlier fold-ins must not change the prior of later ones
        revealed = rng.permutation(n_cols)[:n_revealed]
        values = np.exp(log_y[new, revealed])
        engine = model.predict(np.full(n_cols, model.fold_in_row(revealed, values)), everywhere)
        row, residual = ref.fold_in(model, revealed, values)
        reference = ref.predict(model, row, everywhere, residual)
        np.testing.assert_allclose(engine, reference, rtol=1e-7)


def test_components_and_weights() -> None:
    log_y, x = _noisy_devices(21, 100, seed=3)
    rows, cols = np.nonzero(np.ones((20, 100), dtype=bool))
    model = CFModel(rank=4, iterations=10, seed=0).fit(rows, cols, np.exp(log_y[rows, cols]), 20, 100, x)
    revealed = np.arange(0, 100, 4)
    # A fitted device's own entries: its expert is among the 16 scored and carries the fold-in.
    parts = ref.components(model, revealed, np.exp(log_y[7, revealed]))
    assert len(parts) == 1 + ref.MAX_EXPERTS and parts[0].row == -1
    w = ref.weights(parts)
    assert w.sum() == pytest.approx(1.0)
    assert parts[int(np.argmax(w))].row == 7
    assert w.max() > 0.5


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_ceiling_tool_agrees_with_cf_eval(tmp_path, capsys, leave_one_out: bool) -> None:
    log_y, x = _noisy_devices(12, 80, seed=5)
    path = tmp_path / "devices.csv"
    write_csv(path, np.exp(log_y), [f"dev{i}" for i in range(12)], [f"c{j}" for j in range(80)], x, list("abcd"))
    flags = ["--leave-one-out"] if leave_one_out else []
    assert cf_fold_in_ceiling.main(["--csv", str(path), "--seeds", "2", "--reveal", "5", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    # The engine's own fold-in is what cf_eval reports for cf_cpp on the same splits.
    report = cf_eval.evaluate(load_csv(path), "new-row", 0.3, 2, ("cf_cpp",), (5,), leave_one_out)
    assert out["within10"]["engine"] == pytest.approx(report["methods"]["cf_cpp"]["within10"], abs=0.01)
    # Chosen in hindsight per row, the best component is at least as good as the heaviest one.
    for scores in [out["within10"], *out["per_row"].values()]:
        assert scores["best_component"] >= scores["top_component"]
        assert scores["best_scale"] >= scores["engine"]  # the factors tried include 1
    held = Counter(f"dev{r}" for seed in (0, 1) for r in new_row_split(load_csv(path), 0.3, seed)[0])
    if leave_one_out:
        held = Counter({f"dev{i}": 2 for i in range(12)})  # every row alone, once per seed
    assert {label: scores["held_out"] for label, scores in out["per_row"].items()} == held
