"""What every detector shares: the interface, p-value tails, EWMA, window and CUSUM helpers.

A detector is a frozen dataclass of parameters; what it has learned about one
series lives in a separate `DetectorState` (a msgspec struct), so a faust
table can hold it as bytes between readings. Every detector answers with a
**p-value**: the chance of a reading at least this unusual if the series
behaves as it has so far. Users see `anomaly_score(p) = 1 - p`.

The helpers here come in pairs, one reading at a time and a whole array at
once, and each pair computes the *same* numbers: the EWMA recursions use the
arithmetic `scipy.signal.lfilter` uses, so the two paths agree to the bit
wherever a later branch (a warm-up count, a rounding, a tolerance) depends
on them.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> xs = rng.normal(10.0, 2.0, size=500)
>>> n, mean, var = 0, 0.0, 0.0
>>> for x in xs:
...     n, mean, var = ewma_learn(n, mean, var, float(x), alpha=0.02, cap=100)
>>> trace = ewma_learn_many(0, 0.0, 0.0, xs, alpha=0.02, cap=100)
>>> (trace.n, trace.mean, trace.var) == (n, mean, var)  # to the bit
True
>>> round(mean, 3), round(var ** 0.5, 3)
(9.478, 2.039)
>>> round(anomaly_score(student_p(3.0, 40.0)), 3)
0.995
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter
from scipy.special import stdtr

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Direction = Literal["both", "rise", "fall"]

#: Phi^-1(3/4): MAD * 1.4826 estimates sigma for normal data; z = 0.6745 (x - med) / MAD.
MAD_Z = 0.6745
#: Asymptotic efficiency of the MAD as a scale estimate for normal data
#: (1 / (2 * 1.3605)). A window of n values estimates the scale as well as
#: about 0.3675 n values would with the sample standard deviation, and that
#: is the Student-t degrees of freedom the window-based detectors use.
MAD_EFFICIENCY = 0.3675
#: Rows sorted per numpy call in the window helpers: 8192 x 64 floats is 4 MiB.
_CHUNK_ROWS = 8192


class DetectorState(msgspec.Struct, array_like=True, tag=True):
    """What a detector has learned about one series; encoded to msgpack between readings.

    Subclasses are tagged (a short string, first in the encoded array) so the
    combined scorer can hold a list of different states and decode them
    again. Fields are positional (`array_like`): a new field goes at the end,
    with a default, or old bytes no longer decode.
    """


S = TypeVar("S", bound=DetectorState)
T_co = TypeVar("T_co", bound=msgspec.Struct, covariant=True)


class HasStateType(Protocol[T_co]):
    """Anything that says which struct its state is: every detector, and the scorer."""

    @property
    def state_type(self) -> type[T_co]: ...


class Detector(Protocol[S]):
    """One online detector for one series. See the package docstring for the contract."""

    @property
    def state_type(self) -> type[S]: ...

    def new_state(self) -> S: ...

    def score_one(self, state: S, x: float, t_ms: int) -> float: ...

    def learn_one(self, state: S, x: float, t_ms: int) -> None: ...

    def score_learn_many(self, state: S, xs: npt.ArrayLike, ts_ms: npt.ArrayLike) -> FloatArray: ...


def anomaly_score(p: float) -> float:
    """What users see: 1 - p, so 0 is ordinary and anything near 1 is anomalous.

    >>> anomaly_score(1.0), anomaly_score(0.25)
    (0.0, 0.75)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return 1.0 - p


def encode_state(state: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(state)


def decode_state(owner: HasStateType[T_co], data: bytes) -> T_co:
    """Bytes from `encode_state` back to a detector's (or scorer's) state;
    `msgspec.ValidationError` when they belong to another kind of detector."""
    return msgspec.msgpack.decode(data, type=owner.state_type)


# --- validation -------------------------------------------------------------


def check_value(x: float) -> float:
    """A reading as a float. NaN and infinity raise: the contract guarantees finite
    values, so one here is a programming error upstream, not data to learn from."""
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"x must be a finite number, got {x!r}")
    return value


def as_series(xs: npt.ArrayLike, ts_ms: npt.ArrayLike) -> tuple[FloatArray, IntArray]:
    """Validate the arrays for a `score_learn_many` call: 1-D, same length, finite
    values, integer millisecond timestamps."""
    values = np.asarray(xs, dtype=np.float64)
    times = np.asarray(ts_ms)
    if values.ndim != 1 or times.shape != values.shape:
        raise ValueError(
            f"xs and ts_ms must be 1-D and the same length, got shapes "
            f"{values.shape} and {times.shape}"
        )
    if times.size and times.dtype.kind not in "iu":
        raise ValueError(f"ts_ms must hold integers (milliseconds), got dtype {times.dtype}")
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"xs must be finite, got {values[bad]!r} at index {bad}")
    return values, times.astype(np.int64, copy=False)


def check_fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> None:
    """Raise unless low < value < high (an open interval: the rates and probabilities
    here are useless at either end)."""
    if not low < value < high:
        raise ValueError(f"{name} must be in ({low}, {high}), got {value!r}")


def check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_count(name: str, value: int, *, low: int = 1, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


def check_direction(direction: str) -> None:
    if direction not in ("both", "rise", "fall"):
        raise ValueError(f"direction must be 'both', 'rise' or 'fall', got {direction!r}")


# --- tails ------------------------------------------------------------------


def student_p(z: float, nu: float, direction: Direction = "both") -> float:
    """Tail probability of a standardised residual under Student's t with `nu` degrees
    of freedom: the normal tail, widened for a scale that was itself estimated
    from a finite (or exponentially weighted) sample. Large `nu` is the normal.

    >>> round(student_p(1.96, 1e9), 3), round(student_p(1.96, 10.0), 3)
    (0.05, 0.078)
    """
    if direction == "both":
        return 2.0 * float(stdtr(nu, -abs(z)))
    return float(stdtr(nu, -z if direction == "rise" else z))


def student_p_many(
    z: FloatArray, nu: npt.NDArray[np.floating[Any]], direction: Direction = "both"
) -> FloatArray:
    if direction == "both":
        out: FloatArray = 2.0 * stdtr(nu, -np.abs(z))
        return out
    tail: FloatArray = stdtr(nu, -z if direction == "rise" else z)
    return tail


# --- EWMA mean and variance -------------------------------------------------


def ewma_cap(alpha: float, warm_up: int) -> int:
    """Where a reading count can stop: past warm-up, and past 2/alpha, beyond which
    the Welford start is over and the degrees of freedom stop growing."""
    return max(warm_up, math.ceil(2.0 / alpha))


def ewma_nu(n: int, alpha: float) -> float:
    """Degrees of freedom of the variance after n readings: n - 1 for the plain
    average the recursion starts as, (2 - alpha) / alpha once it is exponential."""
    return float(min(n - 1, (2.0 - alpha) / alpha))


def ewma_learn(
    n: int, mean: float, var: float, x: float, *, alpha: float, cap: int
) -> tuple[int, float, float]:
    """One step of the incremental EWMA mean and variance (Finch 2009):
    mean += a*d; var = (1-a)*(var + a*d^2), d = x - mean.

    The weight is a = max(alpha, 1/(n+1)): for the first 1/alpha readings the
    recursion is Welford's running mean and population variance, so an early
    estimate is not biased towards the zero it starts from. After that it is
    written as lfilter computes it (c*mean + alpha*x), so that
    `ewma_learn_many` reproduces it to the bit.
    """
    d = x - mean
    a = 1.0 / (n + 1)
    if a > alpha:
        return n + 1, mean + a * d, (1.0 - a) * (var + a * d * d)
    c = 1.0 - alpha
    return min(n + 1, cap), c * mean + alpha * x, c * var + (c * alpha) * (d * d)


@dataclass(frozen=True, slots=True)
class EwmaTrace:
    """The EWMA seen by each reading before it was learned, and the state after all."""

    n_before: IntArray
    mean_before: FloatArray
    var_before: FloatArray
    n: int
    mean: float
    var: float


def ewma_learn_many(
    n: int, mean: float, var: float, xs: FloatArray, *, alpha: float, cap: int
) -> EwmaTrace:
    """`ewma_learn` over an array: a Python loop for the short Welford start, then two
    first-order `lfilter` passes (mean, then variance from the residuals)."""
    size = len(xs)
    n_before = np.minimum(n + np.arange(size, dtype=np.int64), cap)
    mean_before = np.empty(size)
    var_before = np.empty(size)
    i = 0
    while i < size and 1.0 / (n + 1) > alpha:
        mean_before[i] = mean
        var_before[i] = var
        n, mean, var = ewma_learn(n, mean, var, float(xs[i]), alpha=alpha, cap=cap)
        i += 1
    if i < size:
        c = 1.0 - alpha
        tail = xs[i:]
        means = lfilter([alpha], [1.0, -c], tail, zi=[c * mean])[0]
        mean_before[i] = mean
        mean_before[i + 1 :] = means[:-1]
        d = tail - mean_before[i:]
        varis = lfilter([c * alpha], [1.0, -c], d * d, zi=[c * var])[0]
        var_before[i] = var
        var_before[i + 1 :] = varis[:-1]
        n, mean, var = min(n + (size - i), cap), float(means[-1]), float(varis[-1])
    return EwmaTrace(n_before, mean_before, var_before, n, mean, var)


def ewma_z(x: float, mean: float, var: float, *, alpha: float, min_scale: float) -> float:
    """Residual over the predictive spread. The recursion's variance is (1 - alpha)
    times the spread of the next residual (the mean is uncertain too), hence
    the division; `min_scale` keeps a constant history from dividing by zero."""
    return (x - mean) / max(math.sqrt(var / (1.0 - alpha)), min_scale)


def ewma_z_many(
    xs: FloatArray, mean: FloatArray, var: FloatArray, *, alpha: float, min_scale: float
) -> FloatArray:
    scale = np.maximum(np.sqrt(var / (1.0 - alpha)), min_scale)
    z: FloatArray = (xs - mean) / scale
    return z


def ewma_nu_many(n: IntArray, alpha: float) -> FloatArray:
    nu: FloatArray = np.minimum(n - 1, (2.0 - alpha) / alpha).astype(np.float64)
    return nu


def masked_ewma_before(
    start: float, values: FloatArray, mask: npt.NDArray[np.bool_], *, alpha: float
) -> tuple[FloatArray, float]:
    """A plain EWMA (c*m + alpha*v) learned only at the readings where `mask` is set:
    the value each reading saw before its own update, and the final value."""
    c = 1.0 - alpha
    observed = values[mask]
    after = lfilter([alpha], [1.0, -c], observed, zi=[c * start])[0] if observed.size else observed
    history = np.concatenate(([start], after))
    seen = np.cumsum(mask, dtype=np.int64) - mask.astype(np.int64)
    return history[seen], float(history[-1])


# --- windows of past values -------------------------------------------------


def median_sorted(ordered: Sequence[float]) -> float:
    size = len(ordered)
    mid = size // 2
    return ordered[mid] if size % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def median_rows(ordered: FloatArray) -> FloatArray:
    """Row medians of a row-sorted 2-D array, with the arithmetic of `median_sorted`."""
    width = ordered.shape[1]
    mid = width // 2
    if width % 2:
        return ordered[:, mid].copy()
    out: FloatArray = (ordered[:, mid - 1] + ordered[:, mid]) / 2
    return out


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    """Median and median absolute deviation of a small window (sorts a copy)."""
    med = median_sorted(sorted(values))
    return med, median_sorted(sorted(abs(v - med) for v in values))


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Per reading: how many past values its window held, their median and MAD."""

    size: IntArray
    median: FloatArray
    mad: FloatArray


def window_stats(
    history: Sequence[float], new: FloatArray, *, width: int, with_mad: bool
) -> WindowStats:
    """Median (and MAD) of the `width` values before each element of `new`, where
    `history` holds the values before `new[0]`, oldest first.

    Windows not yet full (at most `width` of them) go through `median_mad` in a
    loop; full ones are sorted in chunks (numpy's SIMD sort of 64-wide rows is
    several times faster than `np.partition` for the two middle elements).
    The same order statistics come out either way, bit for bit.
    """
    lead = len(history)
    values = np.concatenate((np.asarray(history, dtype=np.float64), new))
    size = len(new)
    sizes = np.minimum(lead + np.arange(size, dtype=np.int64), width)
    med = np.zeros(size)
    mad = np.zeros(size)
    partial = min(size, max(0, width - lead))
    for i in range(partial):
        window = values[: lead + i].tolist()
        if not window:
            continue
        if with_mad:
            med[i], mad[i] = median_mad(window)
        else:
            med[i] = median_sorted(sorted(window))
    if partial < size:
        # Row r of the view is values[r : r + width]; reading i needs r = lead + i - width.
        rows = sliding_window_view(values[:-1], width)[lead + partial - width :]
        for start in range(0, len(rows), _CHUNK_ROWS):
            block = np.sort(rows[start : start + _CHUNK_ROWS], axis=1)
            at = slice(partial + start, partial + start + len(block))
            med[at] = median_rows(block)
            if with_mad:
                dev = np.sort(np.abs(block - med[at, None]), axis=1)
                mad[at] = median_rows(dev)
    return WindowStats(sizes, med, mad)


# --- CUSUM ------------------------------------------------------------------


def lindley_many(s0: float, steps: FloatArray, *, block: int = 256) -> FloatArray:
    """s_i = max(0, s_{i-1} + steps_i) for every i, without a Python loop per element.

    Within a block of `block` steps, with W the block's running sum and M its
    running minimum, s = W - min(-s_start, M); only the block starts are
    carried in a loop. Blocks keep the running sums small, so the difference
    W - M loses no more precision than the loop's own additions.
    """
    size = len(steps)
    if size == 0:
        return np.empty(0)
    blocks = -(-size // block)
    padded = np.zeros(blocks * block)
    padded[:size] = steps  # zero steps after the end leave s unchanged
    sums = np.cumsum(padded.reshape(blocks, block), axis=1)
    lows = np.minimum.accumulate(sums, axis=1)
    starts = np.empty(blocks)
    s = s0
    for j, (total, low) in enumerate(zip(sums[:, -1].tolist(), lows[:, -1].tolist(), strict=True)):
        starts[j] = s
        s = total - min(-s, low)
    out: FloatArray = (sums - np.minimum(-starts[:, None], lows)).ravel()[:size]
    return out
