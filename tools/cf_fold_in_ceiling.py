"""Where the new-row fold-in loses accuracy: the engine's fold-in against its mixture's parts, per held-out row.

    python -m tools.cf_fold_in_ceiling --csv FILE [--seeds 3] [--first-seed 0] [--reveal 10] [--leave-one-out]
                                       [--fill 0.3]

The splits are those of `tools.cf_eval --protocol new-row` (same seeds, same held-out rows, same reveal order). Each
held-out row is folded in from its first `reveal` entries and scored (within10, %) on the rest of its entries, five
ways:

* `engine`: the engine's fold-in (`CFModel.fold_in_row`: the mixture, or an additive row when the data set has
  additive features and the row's entries pick it), what cf_eval reports for cf_cpp;
* `top_component`: the mixture's heaviest component alone (a hard choice instead of the weighted mean);
* `best_component`: the component that scores best on the test entries, chosen in hindsight: the most any choice
  among the mixture's components could give from these entries;
* `all_revealed`: the engine's fold-in from all of the row's entries, scored on the same entries (in-sample): the
  most the fixed column model allows at all;
* `best_scale`: the engine's fold-in times the one factor (within +-30%) that scores best on the row's test entries,
  chosen in hindsight: the most any recalibration of the row's level could give (what is left is its shape).

Components come from the numpy reference of the fold-in (`tools/cf_fold_in_reference.py`, checked against the engine
by tests/test_cf_fold_in_reference.py). Prints one JSON object: the five figures over all held-out rows, and per row
label with `held_out`, how many of the splits held that row out (each held-out row weighs the same in the totals,
up to its number of test entries).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np

from tools import cf_fold_in_reference as ref
from tools import cf_methods
from tools.cf_data import Matrix, load_csv
from tools.cf_protocols import HOLDOUT_FRACTION, new_row_splits, within10_hits

WAYS = ("engine", "top_component", "best_component", "all_revealed", "best_scale")
SCALES = np.exp(np.linspace(-0.3, 0.3, 121))  # the factors best_scale tries


def score_row(model, m: Matrix, entries: np.ndarray, reveal: int) -> dict[str, np.ndarray]:
    """Within-10% flags of one held-out row's test entries (entries beyond `reveal`), each way of WAYS."""
    test_cols, truth = m.cols[entries[reveal:]], m.values[entries[reveal:]]
    cols, values = m.cols[entries[:reveal]], m.values[entries[:reveal]]

    def engine(shown_cols: np.ndarray, shown_values: np.ndarray) -> np.ndarray:
        row = model.fold_in_row(shown_cols, shown_values)
        return within10_hits(model.predict(np.full(test_cols.size, row), test_cols), truth)

    parts = ref.components(model, cols, values)
    by_part = [within10_hits(ref.predict(model, p.mean, test_cols, p.residual), truth) for p in parts]
    folded = model.predict(np.full(test_cols.size, model.fold_in_row(cols, values)), test_cols)
    return {
        "engine": within10_hits(folded, truth),
        "top_component": by_part[int(np.argmax(ref.weights(parts)))],
        "best_component": max(by_part, key=np.mean),
        "all_revealed": engine(m.cols[entries], m.values[entries]),
        "best_scale": max((within10_hits(folded * s, truth) for s in SCALES), key=np.mean),
    }


def ceiling(m: Matrix, fill: float, seeds: range, reveal: int, leave_one_out: bool) -> dict:
    """Within10 (%) of every way of WAYS over the held-out rows of the new-row splits of `seeds`, and per row label."""
    flags: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: {w: [] for w in WAYS})
    for seed in seeds:
        for held_rows, train, remap, n_kept, order in new_row_splits(m, fill, seed, leave_one_out):
            method = cf_methods.make("cf_cpp", seed)  # as cf_eval makes it
            assert isinstance(method, cf_methods.Engine)
            method.fit(remap[m.rows][train], m.cols[train], m.values[train], n_kept, m.n_cols, m.features, m.additive)
            for r in held_rows:
                if order[r].size <= reveal:
                    continue
                for way, hits in score_row(method.model, m, order[r], reveal).items():
                    flags[m.row_labels[r]][way].append(hits)

    def pct(arrays: list[np.ndarray]) -> float:
        return round(100 * float(np.concatenate(arrays).mean()), 2)

    return {
        "within10": {w: pct([a for rows in flags.values() for a in rows[w]]) for w in WAYS},
        "per_row": {
            label: {**{w: pct(rows[w]) for w in WAYS}, "held_out": len(rows["engine"])}
            for label, rows in sorted(flags.items())
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--reveal", type=int, default=10)
    p.add_argument("--fill", type=float, default=0.3)
    p.add_argument("--leave-one-out", action="store_true", help="hold out every row alone (else 20%% per seed)")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.reveal < 1 or not 0 < args.fill <= 1:
        p.error("--seeds and --reveal must be >= 1 and --fill in (0, 1]")
    m = load_csv(args.csv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    held = "leave-one-out" if args.leave_one_out else f"{HOLDOUT_FRACTION:.0%} of rows held out"
    result = {
        "csv": args.csv,
        "protocol": f"new-row, {held}",
        "fill": args.fill,
        "seeds": [seeds.start, seeds.stop - 1],
        "reveal": args.reveal,
        **ceiling(m, args.fill, seeds, args.reveal, args.leave_one_out),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
