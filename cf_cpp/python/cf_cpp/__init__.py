"""cf_cpp: the C++ collaborative-filtering engine of RoaD-RuNNer.

Predicts a sparse ``rows x cols`` matrix of positive quantities (per-device latency in ms or energy in mJ; rows are
nodes, columns are block signatures) by matrix factorisation in log space::

    log y[r, c] = mu + b_r + b_c + p_r . q_c,        [b_c, q_c] = Theta @ x_c + e_c

``x_c`` are optional column features (e.g. log flops, log parameter bytes, log input/output bytes, op-type counts).
With features every column has a learned prior, so a column no row has measured is predicted from its features (cold
start) and a sparsely measured column is pulled toward its prior. Fitting is alternating least squares: deterministic
for a seed, multi-threaded, identical for any thread count and any order of the entries. With features (and
``kernel_residual=True``, the default) each row then also fits its training residuals by kernel ridge regression on
the features (second-order polynomial kernel), which adds ``h_r(c)`` (``row_residuals``) to its log predictions: what
the row does differently with pairs of features, which the shared linear prior and factors cannot express.

A new row (device) is folded in from a few measurements without a refit: a Bayesian fold-in whose prior is a
mixture built from the fitted rows (one Gaussian around each fitted row, with a free offset and scale, and one around
their mean), each component's posterior weighted by how well it explains the measurements (a folded-in row may
scale the column bias: its coefficient is ``row_scales[r]``, 1 for fitted rows). Each fitted row's component
carries that row's ``h_r``; the new row's residual is their weighted sum.

With ``additive_features`` (raw per-column quantities >= 0, e.g. op counts, flops, bytes) a new row may instead be
their weighted sum, ``y[r, c] = w_r . [1, a_c]`` in raw units (Neurosurgeon's per-layer-type regression): when it
has measured at least 4 more columns than that regression has weights (a column measured more than once is one
entry), and the regression's cross-validated log error on them is at most half the fold-in's (``additive_rows``). It
places a device that is close to additive but unlike every fitted row from a handful of measurements.

Usage::

    import numpy as np
    from cf_cpp import CFModel

    model = CFModel(rank=16, reg=0.1, iterations=20, seed=0)
    model.fit(rows, cols, values, n_rows, n_cols, col_features=None, additive_features=None)  # returns self
    y = model.predict(rows, cols)                 # raw units (log=True for log units)
    r = model.fold_in_row(cols, values)           # new row from a few measurements -> its row index
    c0 = model.add_cols(n, col_features, additive_features)  # new cold columns -> first index
    model.refit(rows, cols, values)               # warm-started refit on the updated data
    model.save(path); model = CFModel.load(path)

Errors: invalid input (non-positive or non-finite values, out-of-range indices, shape mismatches, unfitted model)
raises :class:`InvalidInputError`, a subclass of ``ValueError``; unreadable model files raise
:class:`ModelFileError`, a subclass of ``OSError`` whose ``errno`` is that of the system call that failed (``ENOENT``
for a missing file; None for a file that is no model, and where loading runs out of memory); ``save`` raises
:class:`InvalidInputError` for a model that ``load`` would refuse. Arrays of the exact dtype (int64 indices, float64
values, C-contiguous) are used without copies, borrowed for the length of the call: another thread must not write to
them while it runs (what it reads mid-write is undefined); other numeric arrays are converted. Paths are ``str``,
``bytes`` or path-like (any name the file system allows). A model is saved through a symbolic link to its target,
which it creates if need be; only regular files load. Before ``fit`` the properties are empty (arrays of length 0,
0.0). ``copy.copy``, ``copy.deepcopy`` and ``pickle`` give an independent model (through the bytes ``save`` writes).
A model is safe to share between threads: reads (``predict``, the properties) run together, and wait, with the GIL
released, for a ``fit``, ``refit``, ``fold_in_row`` or ``add_cols`` in another thread; a call that raises changes
nothing. ``threads`` beyond the machine's cores are not started (the results do not depend on the count). Ctrl-C
stops a ``fit`` or ``refit`` (called from the main thread) before its next row or column solve or row kernel:
KeyboardInterrupt, the model as it was.
"""

from cf_cpp._core import InvalidInputError, ModelFileError
from cf_cpp._model import CFModel

__all__ = ["CFModel", "InvalidInputError", "ModelFileError"]
__version__ = "0.1.0"
