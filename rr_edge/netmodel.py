"""Network cost model of one direction of the edge <-> cloud link (pure, no I/O).

Three curves of transfer time (ms) against message size (bytes) are fitted to a network profile:

* ``poly4``  — the paper's fourth-order polynomial of message size (fitted on x = bytes / largest size, so it stays
  well conditioned from KB to hundreds of MB); outside the profiled range it is continued linearly with the affine
  slope instead of letting the quartic explode;
* ``affine`` — the physical model ``rtt_ms + bytes / bandwidth`` with both terms non-negative;
* ``pwl``    — piecewise linear through the median time of every profiled size (made non-decreasing), continued
  beyond the largest size with the bulk slope of its top sizes. Real links are not one straight line: a token-bucket
  shaper (``tc tbf``, a provider's burst allowance) or TCP slow start sends the first few hundred KB faster than
  the sustained rate, so a single line fitted over 1 KB .. 256 MB gets the bulk rate wrong by tens of percent.

Affine and polynomial are fitted with relative (1 / time) weights, so small messages count as much as large ones.
All three are scored by leave-one-size-out prediction on the profiled sizes (mean absolute relative error). The
affine model is kept unless another is clearly better (``poly_margin`` x its error); then the better of the other
two is chosen. A curve that predicts a bigger message as faster than a smaller one is never chosen (a quartic
fitted across a sharp knee can dip). Optional energy per transfer (mJ) is fitted with a non-negative affine model of
bytes, on the sizes with a positive reading (at least `MIN_ENERGY_SIZES` of them).

At run time `NetworkModel.update` folds observed (bytes, ms) transfers into an exponentially weighted multiplicative
correction of the fitted curve; `NetworkModel.drifted` says when it moved by more than a threshold (default 25%)
since the last plan, and `NetworkModel.rebased` marks the current correction as the one planned with. Transfers of
two sizes tell the fixed cost per message from the cost per byte: `NetworkModel.rescaled` scales the two apart (a
link whose round trip grew but whose bandwidth did not).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.polynomial import polynomial as P

AFFINE = "affine"
POLY4 = "poly4"
PWL = "pwl"
KINDS = (AFFINE, POLY4, PWL)
PWL_TAIL = 16.0  # the pwl extrapolation slope is fitted over the top four octaves of the profiled sizes
DEFAULT_ALPHA = 0.2
DEFAULT_DRIFT_THRESHOLD = 0.25
DEFAULT_POLY_MARGIN = 0.9
MIN_ENERGY_SIZES = 2
_EPS_MS = 1e-9


@dataclass(frozen=True)
class NetworkModel:
    """Predicts transfer time (ms) and, optionally, edge energy (mJ) of one message of ``nbytes`` bytes.

    ``coeffs``: affine -> (rtt_ms, ms_per_byte); poly4 -> c0..c4 of the polynomial in x = bytes / scale_bytes;
    pwl -> ms at each of ``knots`` (bytes, increasing).
    ``slope_ms_per_byte`` continues a polynomial or pwl curve outside ``[lo_bytes, hi_bytes]``.
    ``energy_coeffs``: (mJ per transfer, mJ per byte) or None when no energy was profiled.
    ``drift`` is the exponentially weighted ratio observed / fitted time; ``ref_drift`` its value when last planned.
    ``fixed_drift`` scales the curve's fixed cost (its value at 0 bytes) apart from the rest, before ``drift``.
    """

    kind: str
    coeffs: tuple[float, ...]
    scale_bytes: float = 1.0
    lo_bytes: float = 0.0
    hi_bytes: float = float("inf")
    slope_ms_per_byte: float = 0.0
    energy_coeffs: tuple[float, float] | None = None
    drift: float = 1.0
    ref_drift: float = 1.0
    alpha: float = DEFAULT_ALPHA
    knots: tuple[float, ...] = ()
    fixed_drift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown network model kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        if self.kind == AFFINE and len(self.coeffs) != 2:
            raise ValueError("an affine network model needs coeffs (rtt_ms, ms_per_byte)")
        if self.kind == PWL and (len(self.knots) < 2 or len(self.knots) != len(self.coeffs)):
            raise ValueError("a pwl network model needs at least two knots and one time (coeffs) per knot")
        if self.kind == PWL and not np.all(np.diff(self.knots) > 0):
            raise ValueError("pwl knots must be strictly increasing")
        if self.kind == PWL:  # its range is its knots': a hand-built one (hi_bytes inf) was flat past its last knot
            # while the planner's lower bound took the slope there, and pruned the cheapest plans (found by review)
            object.__setattr__(self, "lo_bytes", float(self.knots[0]))
            object.__setattr__(self, "hi_bytes", float(self.knots[-1]))
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        numbers = (*self.coeffs, *self.knots, *(self.energy_coeffs or ()), self.slope_ms_per_byte, self.lo_bytes)
        drifts = (self.drift, self.ref_drift, self.fixed_drift)
        if not all(np.isfinite(c) for c in (*numbers, *drifts, self.scale_bytes)):
            raise ValueError("network model coefficients, knots, drift and scale must be finite numbers")
        if min(drifts) <= 0 or self.scale_bytes <= 0 or np.isnan(self.hi_bytes):
            raise ValueError("network model drift and scale must be positive, hi_bytes a number")
        times = (*self.energy_coeffs, self.slope_ms_per_byte) if self.energy_coeffs else (self.slope_ms_per_byte,)
        if self.kind in (AFFINE, PWL):
            times = (*times, *self.coeffs)  # a quartic's coefficients may be negative, its values are not
        if any(c < 0 for c in times):
            raise ValueError("network model times, slopes and energies must not be negative")
        if not 0.0 <= self.lo_bytes <= self.hi_bytes:
            raise ValueError(
                f"network model range needs 0 <= lo_bytes <= hi_bytes, got {self.lo_bytes}, {self.hi_bytes}"
            )

    def check_finite(self) -> NetworkModel:
        """`self`, if it predicts finite times and energies: finite coefficients can still predict inf (1e308 ms per
        byte), and the server stored such a model, on which every later plan crashed (review). Checked at the range's
        ends and at a size past any message's (1 TiB); by `from_dict`, where models arrive from outside (a fit and a
        runtime update make none such, and a check at every request's update cost 20 us)."""
        ends = (self.lo_bytes, self.hi_bytes) if np.isfinite(self.hi_bytes) else (self.lo_bytes,)
        sizes = np.array([0.0, *ends, 2.0**40])
        with np.errstate(over="ignore", invalid="ignore"):
            energy = self.predict_mJ(sizes) if self.energy_coeffs else sizes
            if not (np.all(np.isfinite(self.predict_ms(sizes))) and np.all(np.isfinite(energy))):
                raise ValueError("network model predicts a time or energy that is not a finite number")
        return self

    @classmethod
    def affine(cls, rtt_ms: float, bandwidth_bytes_per_ms: float, **kw: Any) -> NetworkModel:
        """Affine link: ``rtt_ms`` per message plus ``1 / bandwidth`` ms per byte (bandwidth in bytes/ms = kB/s)."""
        if rtt_ms < 0 or bandwidth_bytes_per_ms <= 0:
            raise ValueError("rtt_ms must be >= 0 and bandwidth > 0")
        return cls(AFFINE, (float(rtt_ms), 1.0 / float(bandwidth_bytes_per_ms)), **kw)

    @property
    def rtt_ms(self) -> float:
        """Fixed cost per message (ms) of the fitted curve: its value at 0 bytes."""
        return float(self._fitted(np.zeros(1))[0])

    @property
    def has_energy(self) -> bool:
        return self.energy_coeffs is not None

    def affine_terms(self) -> tuple[float, float] | None:
        """(ms per message, ms per byte) when ``predict_ms`` is exactly affine in bytes >= 0, else None."""
        if self.kind != AFFINE or self.coeffs[0] < 0 or self.coeffs[1] < 0:
            return None
        return self.coeffs[0] * self.fixed_drift * self.drift, self.coeffs[1] * self.drift

    def affine_lower_bound(self) -> tuple[float, float]:
        """(a, b) with a + b * bytes <= predict_ms(bytes) for every bytes >= 0 (equal for an affine model).

        For a polynomial, b is the extrapolation slope and a the exact minimum of base(x) - b x: constant outside
        the profiled range, and over it found at the polynomial's stationary points (roots of its derivative).
        """
        if self.kind == AFFINE:
            return self.coeffs[0] * self.fixed_drift * self.drift, self.coeffs[1] * self.drift
        shift = self._fixed_shift()  # a constant: the bound of base holds for base + shift
        if self.kind == PWL:  # base - b x is linear between knots and constant outside them: minimum at a knot
            b = self.slope_ms_per_byte
            a = float(np.min(np.asarray(self.coeffs) - b * np.asarray(self.knots)))
            return (a + shift - 1e-9 * (1.0 + abs(a))) * self.drift, b * self.drift
        b, scale = self.slope_ms_per_byte, self.scale_bytes
        g = np.array(self.coeffs, dtype=np.float64)
        g[1] -= b * scale  # g(t) = poly(t) - b * scale * t, t = x / scale
        a = float(np.min(P.polyval(self._extreme_points(g), g)))
        a -= 1e-9 * (1.0 + abs(a))  # round-off margin: a bound must never exceed the curve
        return (a + shift) * self.drift, b * self.drift

    def non_decreasing(self) -> bool:
        """True when ``predict_ms`` never falls as bytes grow, for every bytes >= 0.

        Outside ``[lo_bytes, hi_bytes]`` a polynomial or pwl curve goes on from its end values with
        ``slope_ms_per_byte``, so it never falls when that slope is >= 0 and it does not fall inside the range: a
        pwl curve's knot times do not decrease, a polynomial's derivative is >= 0 at the range's ends and at the
        derivative's stationary points inside it.
        """
        if self.kind == AFFINE:
            return self.coeffs[1] >= 0
        if self.slope_ms_per_byte < 0:
            return False
        if self.kind == PWL:
            return bool(np.all(np.diff(self.coeffs) >= 0))
        d = P.polyder(np.array(self.coeffs, dtype=np.float64))  # d/dt of the polynomial in t = bytes / scale
        tol = 1e-9 * (1.0 + float(np.max(np.abs(self.coeffs))))  # round-off of a flat stretch is not a dip
        return bool(np.min(P.polyval(self._extreme_points(d), d)) >= -tol)

    def _extreme_points(self, poly: np.ndarray) -> np.ndarray:
        """Where polynomial `poly` (in t = bytes / scale_bytes) can reach its extremes on the fitted range: the
        range's ends and the stationary points inside it."""
        t_lo, t_hi = self.lo_bytes / self.scale_bytes, min(self.hi_bytes, 1e18) / self.scale_bytes
        roots = P.polyroots(P.polyder(poly)) if np.any(poly[2:]) else np.array([])
        inside = [float(t.real) for t in roots if abs(t.imag) < 1e-9 and t_lo <= t.real <= t_hi]
        return np.array([t_lo, t_hi, *inside])

    def energy_terms(self) -> tuple[float, float] | None:
        """(mJ per message, mJ per byte) of ``predict_mJ`` when it is exactly affine in bytes >= 0, else None."""
        e = self.energy_coeffs
        if e is None or e[0] < 0 or e[1] < 0:
            return None
        return e[0] * self.fixed_drift * self.drift, e[1] * self.drift

    def _fixed_shift(self) -> float:
        """What `fixed_drift` adds to the fitted curve at every size (ms, before `drift`)."""
        return 0.0 if self.fixed_drift == 1.0 else (self.fixed_drift - 1.0) * self._fitted(np.zeros(1))[0]

    def _base(self, x: np.ndarray) -> np.ndarray:
        """The curve before `drift`: the fitted one with its fixed cost scaled by `fixed_drift`."""
        return self._fitted(x) + self._fixed_shift()

    def _fitted(self, x: np.ndarray) -> np.ndarray:
        if self.kind == AFFINE:
            return self.coeffs[0] + self.coeffs[1] * x
        lo, hi, s = self.lo_bytes, self.hi_bytes, self.slope_ms_per_byte
        clipped = np.clip(x, lo, hi)
        if self.kind == PWL:
            inside = np.interp(clipped, self.knots, self.coeffs)
        else:
            inside = P.polyval(clipped / self.scale_bytes, self.coeffs)
        return inside + s * (x - clipped)

    def predict_ms(self, nbytes: Any) -> Any:
        """Transfer time (ms) of messages of ``nbytes`` bytes (scalar -> float, array -> array); never negative."""
        x = np.asarray(nbytes, dtype=np.float64)
        out = np.maximum(self._base(x) * self.drift, 0.0)
        return float(out) if out.ndim == 0 else out

    def predict_mJ(self, nbytes: Any) -> Any:
        """Edge energy (mJ) of transferring ``nbytes`` bytes; raises ValueError when no energy was profiled."""
        if self.energy_coeffs is None:
            raise ValueError("this network model has no energy profile")
        x = np.asarray(nbytes, dtype=np.float64)
        e0, e1 = self.energy_coeffs  # the fixed part scales as the fixed time does (review)
        out = np.maximum(e0 * self.fixed_drift + e1 * x, 0.0) * self.drift
        return float(out) if out.ndim == 0 else out

    def update(self, nbytes: Any, ms: Any, alpha: float | None = None) -> NetworkModel:
        """Fold observed transfers (bytes, ms; scalars or equal-length arrays, in time order) into ``drift``; one
        where the fitted curve is 0 ms is skipped (no ratio to it exists: it had made the drift about 1e8)."""
        a = self.alpha if alpha is None else float(alpha)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {a}")
        xb = np.atleast_1d(np.asarray(nbytes, dtype=np.float64))
        tm = np.atleast_1d(np.asarray(ms, dtype=np.float64))
        if xb.shape != tm.shape or np.any(xb < 0) or np.any(~np.isfinite(tm)) or np.any(tm < 0):
            raise ValueError("update needs equal-length non-negative bytes and finite non-negative ms")
        base = self._base(xb)
        ratios = tm[base > _EPS_MS] / base[base > _EPS_MS]  # a curve at 0 ms says nothing about its scale
        d = self.drift
        for r in ratios:
            d = (1.0 - a) * d + a * float(r)
        return replace(self, drift=max(d, 1e-6))

    def rescaled(self, small: tuple[float, float], large: tuple[float, float]) -> NetworkModel:
        """The curve through two observed transfers, (bytes, ms) each, the first the smaller: its cost per byte
        scaled by `drift` and its fixed cost by `fixed_drift` too, so that both are met. With one factor a probe's
        256 KiB echo on a link whose round trip had grown tenfold also made every byte ten times dearer. Transfers
        these factors cannot meet (the larger no slower than the smaller, or a fixed cost that would be negative:
        timing noise) give the one factor of `update` at the larger, as before."""
        (x0, t0), (x1, t1) = small, large
        fitted = self._fitted(np.array([0.0, x0, x1], dtype=np.float64))
        fixed, g0, g1 = fitted[0], fitted[1] - fitted[0], fitted[2] - fitted[0]  # g: the part that grows with bytes
        if not (x0 < x1 and g1 > g0 and fixed > _EPS_MS and t1 > t0 >= 0):
            return replace(self, fixed_drift=1.0).update(x1, t1, alpha=1.0)
        drift = (t1 - t0) / (g1 - g0)
        fixed_ms = t0 - drift * g0  # the fixed cost as observed (after drift)
        if fixed_ms <= 0:
            return replace(self, fixed_drift=1.0).update(x1, t1, alpha=1.0)
        return replace(self, drift=drift, fixed_drift=fixed_ms / (drift * fixed))

    def drifted(self, threshold: float = DEFAULT_DRIFT_THRESHOLD) -> bool:
        """True when the predicted times moved by more than ``threshold`` (relative) since the last plan."""
        return abs(self.drift / self.ref_drift - 1.0) > threshold

    def rebased(self) -> NetworkModel:
        """The same model, with the current drift marked as the one the plan was made with."""
        return replace(self, ref_drift=self.drift)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what travels in the protobuf profile message)."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "coeffs": [float(c) for c in self.coeffs],
            "scale_bytes": float(self.scale_bytes),
            "lo_bytes": float(self.lo_bytes),
            "hi_bytes": None if np.isinf(self.hi_bytes) else float(self.hi_bytes),
            "slope_ms_per_byte": float(self.slope_ms_per_byte),
            "energy_coeffs": None if self.energy_coeffs is None else [float(c) for c in self.energy_coeffs],
            "drift": float(self.drift),
            "ref_drift": float(self.ref_drift),
            "alpha": float(self.alpha),
            "fixed_drift": float(self.fixed_drift),
        }
        if self.knots:
            d["knots"] = [float(k) for k in self.knots]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkModel:
        """Inverse of `to_dict`; raises ValueError on a malformed dict."""
        try:
            energy = d.get("energy_coeffs")
            hi = d.get("hi_bytes")
            return cls(
                kind=str(d["kind"]),
                coeffs=tuple(float(c) for c in d["coeffs"]),
                scale_bytes=float(d.get("scale_bytes", 1.0)),
                lo_bytes=float(d.get("lo_bytes", 0.0)),
                hi_bytes=float("inf") if hi is None else float(hi),
                slope_ms_per_byte=float(d.get("slope_ms_per_byte", 0.0)),
                energy_coeffs=None if energy is None else (float(energy[0]), float(energy[1])),
                drift=float(d.get("drift", 1.0)),
                ref_drift=float(d.get("ref_drift", 1.0)),
                alpha=float(d.get("alpha", DEFAULT_ALPHA)),
                knots=tuple(float(k) for k in d.get("knots", ())),
                fixed_drift=float(d.get("fixed_drift", 1.0)),
            ).check_finite()
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed network model dict: {exc!r}") from None


def round_trip_overlap_ms(uplink: NetworkModel, downlink: NetworkModel) -> float:
    """The fixed cost that both directions' curves hold but a request pays once.

    Each curve was profiled as whole echo calls (a message one way and a short answer the other), so its value at
    0 bytes is one round trip of the link plus one call's overhead. A request sent up and its answer sent down make
    one round trip, not two: on a link with a 40 ms round trip the two curves summed to 85 ms of network time where
    a request spent 42 ms (found by review)."""
    return min(float(uplink.predict_ms(0.0)), float(downlink.predict_ms(0.0)))


def answer_ms(uplink: NetworkModel, downlink: NetworkModel, nbytes: Any) -> Any:
    """What an answer of ``nbytes`` bytes adds to its request's round trip: the downlink curve less the round trip
    that the uplink curve already holds (`round_trip_overlap_ms`); scalar -> float, array -> array."""
    out = np.maximum(np.asarray(downlink.predict_ms(nbytes)) - round_trip_overlap_ms(uplink, downlink), 0.0)
    return float(out) if out.ndim == 0 else out


def round_trip_ms(uplink: NetworkModel, downlink: NetworkModel, bytes_up: float, bytes_down: float) -> float:
    """Predicted network time of one request of ``bytes_up`` bytes and its answer of ``bytes_down``."""
    return float(uplink.predict_ms(bytes_up)) + float(answer_ms(uplink, downlink, bytes_down))


def split_network_ms(
    network_ms: float, uplink: NetworkModel | None, downlink: NetworkModel | None, bytes_up: int, bytes_down: int
) -> tuple[float, float]:
    """(uplink ms, downlink ms) of a round trip's measured network time: shared as the planner charges the two
    directions (`round_trip_ms`: the round trip's fixed cost with the uplink), or by bytes without models (the edge
    sees one round trip, not its two directions)."""
    if uplink is not None and downlink is not None:
        up, down = float(uplink.predict_ms(bytes_up)), float(answer_ms(uplink, downlink, bytes_down))
    else:
        up, down = float(bytes_up), float(bytes_down)
    share = up / (up + down) if up + down > 0 else 0.5
    return network_ms * share, network_ms * (1.0 - share)


@dataclass(frozen=True)
class NetworkFit:
    """The fitted curves of one direction, their held-out errors (mean |relative error|) and the chosen one."""

    chosen: NetworkModel
    affine: NetworkModel
    poly: NetworkModel | None
    affine_error: float
    poly_error: float
    pwl: NetworkModel | None = None
    pwl_error: float = float("nan")
    sizes: int = 0
    method: str = "leave-one-size-out"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.kind,
            "affine_error": _json_float(self.affine_error),
            "poly_error": _json_float(self.poly_error),
            "pwl_error": _json_float(self.pwl_error),
            "held_out": self.method,
            "sizes": self.sizes,
            "model": self.chosen.to_dict(),
            "affine": self.affine.to_dict(),
            "poly": None if self.poly is None else self.poly.to_dict(),
            "pwl": None if self.pwl is None else self.pwl.to_dict(),
        }


def _json_float(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def _nn_affine(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Non-negative (a, b) minimising sum(((a + b x - y) / y)^2): 2-variable active-set enumeration."""
    w = 1.0 / y
    A = np.stack([w, w * x], axis=1)
    t = np.ones_like(y)
    cands: list[tuple[float, float]] = []
    if len(x) >= 2 and np.ptp(x) > 0:
        sol = np.linalg.lstsq(A, t, rcond=None)[0]
        cands.append((float(sol[0]), float(sol[1])))
    cands.append((0.0, float(max(np.dot(A[:, 1], t) / max(np.dot(A[:, 1], A[:, 1]), 1e-300), 0.0))))
    cands.append((float(max(np.dot(A[:, 0], t) / np.dot(A[:, 0], A[:, 0]), 0.0)), 0.0))
    feasible = [(a, b) for a, b in cands if a >= 0 and b >= 0]
    return min(feasible, key=lambda ab: float(np.sum((A @ np.array(ab) - t) ** 2)))


def _fit_affine(x: np.ndarray, y: np.ndarray) -> NetworkModel:
    a, b = _nn_affine(x, y)
    return NetworkModel(AFFINE, (a, b), lo_bytes=float(x.min()), hi_bytes=float(x.max()), slope_ms_per_byte=b)


def _fit_poly(x: np.ndarray, y: np.ndarray) -> NetworkModel:
    deg = min(4, len(x) - 1)
    scale = float(x.max()) or 1.0
    c = P.polyfit(x / scale, y, deg, w=1.0 / y)
    coeffs = tuple(float(v) for v in c) + (0.0,) * (4 - deg)
    slope = _nn_affine(x, y)[1]
    return NetworkModel(POLY4, coeffs, scale, float(x.min()), float(x.max()), slope)


def _fit_pwl(x: np.ndarray, y: np.ndarray) -> NetworkModel:
    """Through the points (x increasing), made non-decreasing; continued beyond the largest size with the
    least-squares slope of the sizes within `PWL_TAIL` of it (the bulk rate, robust to one noisy point)."""
    ys = np.maximum.accumulate(y)
    tail = x >= x[-1] / PWL_TAIL
    tail[-2:] = True
    slope = max(float(np.polyfit(x[tail], ys[tail], 1)[0]), 0.0)
    return NetworkModel(PWL, tuple(float(v) for v in ys), 1.0, float(x[0]), float(x[-1]), slope,
                        knots=tuple(float(v) for v in x))  # fmt: skip


def _fit_energy(x_all: np.ndarray, energies_mJ: Any, notes: list[str]) -> tuple[float, float] | None:
    """Non-negative affine energy (mJ) of bytes through the median reading of each size that has a positive one;
    None (with a note) when fewer than `MIN_ENERGY_SIZES` sizes do. Missing readings may be nan (or None)."""
    e_all = np.asarray(energies_mJ, dtype=np.float64).ravel()
    if e_all.shape != x_all.shape:
        raise ValueError("energies_mJ must have the length of sizes_bytes")
    ok = np.isfinite(e_all) & (e_all > 0)
    xs = np.unique(x_all[ok])
    if xs.size < MIN_ENERGY_SIZES:
        notes.append(f"energy not fitted: {xs.size} size(s) with a positive reading, {MIN_ENERGY_SIZES} needed")
        return None
    missing = np.setdiff1d(x_all, xs)
    if missing.size:
        notes.append(f"energy fitted without sizes {[int(b) for b in missing]}: no positive reading")
    es = np.array([np.median(e_all[ok & (x_all == s)]) for s in xs])
    return _nn_affine(xs, es)


def _held_out_error(x: np.ndarray, y: np.ndarray, fitter: Any, min_points: int) -> float:
    """Mean |relative error| predicting each size from a fit on the other sizes (nan if too few sizes)."""
    if len(x) - 1 < min_points:
        return float("nan")
    errs = []
    for k in range(len(x)):
        keep = np.arange(len(x)) != k
        model = fitter(x[keep], y[keep])
        errs.append(abs(model.predict_ms(x[k]) - y[k]) / y[k])
    return float(np.mean(errs))


def fit_network_model(
    sizes_bytes: Any,
    times_ms: Any,
    energies_mJ: Any = None,
    *,
    poly_margin: float = DEFAULT_POLY_MARGIN,
) -> NetworkFit:
    """Fit the three curves to one direction's profile (repeats allowed; medians per size are used) and choose.

    ``sizes_bytes``, ``times_ms`` (and optional ``energies_mJ``): equal-length samples, times > 0; an energy that
    is not a positive finite number (nan: none) is left out of the energy fit.
    The polynomial or the piecewise-linear curve (the better of the two that never decreases) is chosen only if its
    held-out error is below ``poly_margin`` x the affine one.
    """
    x_all = np.asarray(sizes_bytes, dtype=np.float64).ravel()
    y_all = np.asarray(times_ms, dtype=np.float64).ravel()
    if x_all.shape != y_all.shape or x_all.size == 0:
        raise ValueError("sizes_bytes and times_ms must be non-empty and of equal length")
    if np.any(~np.isfinite(x_all)) or np.any(x_all < 0) or np.any(~np.isfinite(y_all)) or np.any(y_all <= 0):
        raise ValueError("sizes must be finite and >= 0, times finite and > 0")
    notes: list[str] = []
    xs = np.unique(x_all)
    if xs.size < 2:
        raise ValueError("a network profile needs at least two distinct message sizes")
    ys = np.array([np.median(y_all[x_all == s]) for s in xs])
    energy = None if energies_mJ is None else _fit_energy(x_all, energies_mJ, notes)
    affine = replace(_fit_affine(xs, ys), energy_coeffs=energy)
    poly = replace(_fit_poly(xs, ys), energy_coeffs=energy) if xs.size >= 3 else None
    pwl = replace(_fit_pwl(xs, ys), energy_coeffs=energy) if xs.size >= 3 else None
    aff_err = _held_out_error(xs, ys, _fit_affine, 2)
    poly_err = _held_out_error(xs, ys, _fit_poly, 3) if poly is not None else float("nan")
    pwl_err = _held_out_error(xs, ys, _fit_pwl, 2) if pwl is not None else float("nan")
    chosen = affine
    if not np.isfinite(aff_err):
        notes.append("too few sizes for a held-out error; affine model kept")
    else:
        others = []
        for e, m in ((poly_err, poly), (pwl_err, pwl)):
            if m is None or not np.isfinite(e):
                continue
            if m.non_decreasing():
                others.append((e, m))
            else:  # never cost a bigger message below a smaller one, however well the curve scores
                notes.append(f"{m.kind} not chosen: it predicts some messages as faster than smaller ones")
        if others:
            err, best = min(others, key=lambda em: em[0])
            if err < poly_margin * aff_err:
                chosen = best
            elif err < aff_err:
                notes.append(
                    f"affine kept: {best.kind}'s held-out error {err:.4f} is lower than affine's {aff_err:.4f} by "
                    f"less than {1 - poly_margin:.0%} (the physical model extrapolates more safely)"
                )
    return NetworkFit(chosen, affine, poly, aff_err, poly_err, pwl, pwl_err, sizes=int(xs.size), notes=tuple(notes))
