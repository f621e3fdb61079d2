"""The public estimator: input coercion and checks in front of the C++ core (``cf_cpp._core.Model``)."""

from __future__ import annotations

import numbers
import operator
import os
import tempfile
from typing import Any, SupportsIndex

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cf_cpp import _core


def _array(name: str, x: ArrayLike) -> np.ndarray:
    """`x` as an array: a TypeError for an object that is no sequence (None, a generator: numpy makes a 0-d array of the
    object itself, reported as "must be 1-D, got shape ()"), an InvalidInputError naming `name` for ragged nested lists
    (numpy >= 1.24 refuses them)."""
    try:
        a = np.asarray(x)
    except ValueError as exc:
        raise _core.InvalidInputError(f"{name}: {exc}") from None
    if a.ndim == 0 and a.dtype == object:
        raise TypeError(f"{name} must be an array or a sequence of numbers, not {type(x).__name__}")
    return a


def _index(name: str, x: ArrayLike) -> NDArray[np.int64]:
    a = _array(name, x)
    if a.ndim != 1:
        raise _core.InvalidInputError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise _core.InvalidInputError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.size and a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:  # would wrap to negative
        i = int(np.argmax(a > np.iinfo(np.int64).max))
        raise _core.InvalidInputError(f"{name}[{i}] = {a[i]} is out of range (more than 2**63 - 1)")
    return np.ascontiguousarray(a, dtype=np.int64)  # no copy when already int64 and contiguous


def _integer(name: str, x: SupportsIndex, bits: int = 64, signed: bool = True) -> int:
    """An integer argument: ints and numpy integers, not floats or strings (no silent truncation), within the C++
    type's range (`bits`, `signed`) or an InvalidInputError (the binding would raise a bare TypeError). Not bools
    either: `n_rows=True` was taken for 1 (review)."""
    if isinstance(x, bool | np.bool_):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__} {x!r}")
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(x).__name__} {x!r}") from None
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if not low <= v <= high:
        raise _core.InvalidInputError(f"{name} = {v} is out of range [{low}, {high}]")
    return v


def _real(name: str, x: float) -> float:
    """A real-valued hyperparameter: ints and floats (numpy's too), not strings or bools, representable as a double
    (the binding would raise a bare TypeError). Its range is checked by the core."""
    if isinstance(x, bool | np.bool_) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__} {x!r}")
    try:
        return float(x)
    except OverflowError:
        raise _core.InvalidInputError(f"{name} = {x} is out of the range of a double") from None


def _flag(name: str, x: bool) -> bool:
    """A switch: True or False (numpy's too); not any object's truth value, so that ``log="no"`` is no yes."""
    if not isinstance(x, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {type(x).__name__} {x!r}")
    return bool(x)


def _optional_integer(name: str, x: SupportsIndex | None, bits: int = 64) -> int | None:
    return None if x is None else _integer(name, x, bits)


def _values(name: str, x: ArrayLike) -> NDArray[np.float64]:
    a = _array(name, x)
    if a.ndim != 1:
        raise _core.InvalidInputError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise _core.InvalidInputError(f"{name} must be numeric, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


def _features(x: ArrayLike | None, name: str = "col_features") -> NDArray[np.float64] | None:
    if x is None:
        return None
    a = _array(name, x)
    if a.ndim != 2:
        raise _core.InvalidInputError(f"{name} must be 2-D (n_cols, n_features), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise _core.InvalidInputError(f"{name} must be numeric, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


class CFModel:
    """Hybrid matrix factorisation in log space (see the package docstring for the model).

    Hyperparameters: ``rank`` latent dimension; ``reg`` / ``reg_bias`` ridge on row factors / biases;
    ``reg_col`` / ``reg_col_bias`` ridge pulling column factors / biases toward their feature prior;
    ``reg_features`` ridge on the feature map; ``iterations`` ALS sweeps; ``seed``; ``threads`` (0 = all cores);
    ``kernel_residual``: with column features, also fit each row's training residuals by kernel ridge regression on
    the features (second-order polynomial kernel; a row keeps it only where it helps on its held-out entries).

    ``additive_features`` (of ``fit``, ``refit``, ``add_cols``): raw per-column quantities >= 0 that a device's value
    may be a weighted sum of, such as the count of each op type in a block and its flops (the per-layer-type
    regression of Neurosurgeon). A row folded in from at least 4 more distinct columns than that regression has weights
    is then predicted by it instead of the collaborative fold-in when it cross-validates on the entries (at most 100 of
    them; a column given more than once is one entry, at the geometric mean of its values) with half the log error or
    less (``additive_rows``).
    """

    def __init__(
        self,
        rank: int = 16,
        reg: float = 0.3,
        reg_bias: float = 0.01,
        reg_col: float = 3.0,
        reg_col_bias: float = 3.0,
        reg_features: float = 1.0,
        iterations: int = 20,
        seed: int = 0,
        threads: int = 0,
        init_scale: float = 0.1,
        kernel_residual: bool = True,
    ) -> None:
        self._core = _core.Model(
            rank=_integer("rank", rank, 32),
            reg=_real("reg", reg),
            reg_bias=_real("reg_bias", reg_bias),
            reg_col=_real("reg_col", reg_col),
            reg_col_bias=_real("reg_col_bias", reg_col_bias),
            reg_features=_real("reg_features", reg_features),
            iterations=_integer("iterations", iterations, 32),
            seed=_integer("seed", seed, 64, signed=False),
            threads=_integer("threads", threads, 32),
            init_scale=_real("init_scale", init_scale),
            kernel_residual=_flag("kernel_residual", kernel_residual),
        )

    def fit(
        self,
        rows: ArrayLike,
        cols: ArrayLike,
        values: ArrayLike,
        n_rows: int,
        n_cols: int,
        col_features: ArrayLike | None = None,
        additive_features: ArrayLike | None = None,
    ) -> CFModel:
        """Fit from scratch on entries ``(rows[i], cols[i]) -> values[i]`` (values > 0, raw units). Returns self.

        An entry given more than once counts once per time (its fit is the geometric mean of its values, weighted).
        Ctrl-C (in the main thread) stops it before its next solve: KeyboardInterrupt, the model as it was.
        """
        self._core.fit(
            _index("rows", rows),
            _index("cols", cols),
            _values("values", values),
            _integer("n_rows", n_rows),
            _integer("n_cols", n_cols),
            _features(col_features),
            _features(additive_features, "additive_features"),
        )
        return self

    def refit(
        self,
        rows: ArrayLike,
        cols: ArrayLike,
        values: ArrayLike,
        n_rows: int | None = None,
        n_cols: int | None = None,
        col_features: ArrayLike | None = None,
        iterations: int | None = None,
        additive_features: ArrayLike | None = None,
    ) -> CFModel:
        """Refit on the full updated data, warm-started from the current parameters. Returns self.

        ``n_rows`` / ``n_cols`` may grow (default: unchanged; an unfitted model needs them: it fits from scratch);
        ``col_features=None`` / ``additive_features=None`` keep the current ones. ``iterations`` (>= 0) defaults to
        the constructor's. Every row becomes a fitted row again (none stays additive); a row with no entry in the
        data (one folded in, whose entries were not added) becomes the fitted rows' mean.
        """
        self._core.refit(
            _index("rows", rows),
            _index("cols", cols),
            _values("values", values),
            _optional_integer("n_rows", n_rows),
            _optional_integer("n_cols", n_cols),
            _features(col_features),
            _optional_integer("iterations", iterations, 32),
            _features(additive_features, "additive_features"),
        )
        return self

    def predict(self, rows: ArrayLike, cols: ArrayLike, log: bool = False) -> NDArray[np.float64]:
        """Predicted values of entries ``(rows[i], cols[i])``: raw units, or natural log with ``log=True``."""
        return self._core.predict(_index("rows", rows), _index("cols", cols), _flag("log", log))

    def predict_matrix(self, log: bool = False) -> NDArray[np.float64]:
        """The full ``(n_rows, n_cols)`` prediction matrix."""
        return self._core.predict_matrix(_flag("log", log))

    def fold_in_row(self, cols: ArrayLike, values: ArrayLike) -> int:
        """Add a new row from a few measurements (no refit). Returns the new row index. With no measurements the row
        is the fitted rows' mean; a column given twice counts twice (as in `fit`), except in the additive choice.
        A fold-in whose parameters are not finite (a fit without ridges, say) raises InvalidInputError.

        The row is a Bayesian fold-in against the fixed columns whose prior is a mixture built from the fitted rows
        (one Gaussian around each, with a free offset and scale, and one around their mean), the components weighted
        by their evidence (see docs/cf_cpp.md); or an additive row (see the class docstring).
        """
        return int(self._core.fold_in_row(_index("cols", cols), _values("values", values)))

    def add_cols(
        self, n: int, col_features: ArrayLike | None = None, additive_features: ArrayLike | None = None
    ) -> int:
        """Append ``n`` cold columns predicted from their features. Returns the first new column index (``n_cols``
        when ``n`` is 0: nothing is added). Additive features that would let an additive row's values overflow raise
        InvalidInputError."""
        return int(
            self._core.add_cols(
                _integer("n", n), _features(col_features), _features(additive_features, "additive_features")
            )
        )

    def save(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        """Write the fitted model to ``path`` (binary). A model that `load` would refuse (a parameter that is not
        finite, predictions that could overflow) raises InvalidInputError and writes nothing."""
        self._core.save(os.fsencode(path))

    @classmethod
    def load(cls, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> CFModel:
        """Read a model written by :meth:`save` (ModelFileError if it cannot, running out of memory included)."""
        model = cls.__new__(cls)
        model._core = _core.Model.load(os.fsencode(path))
        return model

    def __getstate__(self) -> dict[str, Any]:
        """Pickled, and copied by `copy`, as its hyperparameters and, once fitted, the bytes `save` writes: a copy is
        a model of its own (the C++ model is not shared)."""
        state: dict[str, Any] = {"params": self.get_params(), "saved": None}
        if self.is_fitted:
            with tempfile.TemporaryDirectory(prefix="cf_cpp-") as tmp:
                path = os.path.join(tmp, "model.cf")
                self.save(path)
                with open(path, "rb") as f:
                    state["saved"] = f.read()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["saved"] is None:
            self._core = CFModel(**state["params"])._core
            return
        with tempfile.TemporaryDirectory(prefix="cf_cpp-") as tmp:
            path = os.path.join(tmp, "model.cf")
            with open(path, "wb") as f:
                f.write(state["saved"])
            try:
                self._core = _core.Model.load(os.fsencode(path))
            except _core.ModelFileError as exc:  # it named a temporary file the caller never saw
                raise _core.ModelFileError(str(exc).replace(f"'{path}'", "the pickled model")) from None

    def get_params(self) -> dict[str, Any]:
        """Constructor hyperparameters."""
        return dict(self._core.get_params())

    @property
    def is_fitted(self) -> bool:
        return bool(self._core.is_fitted)

    @property
    def rank(self) -> int:
        return int(self._core.rank)

    @property
    def n_rows(self) -> int:
        return int(self._core.n_rows)

    @property
    def n_cols(self) -> int:
        return int(self._core.n_cols)

    @property
    def n_features(self) -> int:
        return int(self._core.n_features)

    @property
    def n_additive(self) -> int:
        return int(self._core.n_additive)

    @property
    def additive_rows(self) -> NDArray[np.int64]:
        """Rows predicted as a weighted sum of the additive features (folded in since the last fit / refit)."""
        return self._core.additive_rows

    @property
    def global_mean(self) -> float:
        return float(self._core.global_mean)

    @property
    def row_biases(self) -> NDArray[np.float64]:
        return self._core.row_biases

    @property
    def row_factors(self) -> NDArray[np.float64]:
        return self._core.row_factors

    @property
    def col_biases(self) -> NDArray[np.float64]:
        """Column biases including the feature prior."""
        return self._core.col_biases

    @property
    def col_factors(self) -> NDArray[np.float64]:
        """Column factors including the feature prior."""
        return self._core.col_factors

    @property
    def col_counts(self) -> NDArray[np.int64]:
        """Training observations per column (0 = cold, predicted from features only)."""
        return self._core.col_counts

    @property
    def row_counts(self) -> NDArray[np.int64]:
        """Training observations per row (0 = folded in since the last fit / refit, or unobserved)."""
        return self._core.row_counts

    @property
    def row_scales(self) -> NDArray[np.float64]:
        """Per-row coefficient of the column bias: 1 for fitted rows, fitted by the fold-in for new ones."""
        return self._core.row_scales

    @property
    def noise_var(self) -> float:
        """Mean squared training residual (log units): the observation noise assumed by the fold-in."""
        return float(self._core.noise_var)

    @property
    def row_residuals(self) -> NDArray[np.float64]:
        """Each row's kernel residual h_r(c) in log units, shape (n_rows, n_cols); zeros without it (copy)."""
        return self._core.row_residuals

    def __repr__(self) -> str:
        return f"CFModel(rank={self.rank}, n_rows={self.n_rows}, n_cols={self.n_cols}, fitted={self.is_fitted})"
