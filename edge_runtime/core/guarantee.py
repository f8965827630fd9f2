"""The quality guarantee's mathematics: Learn-then-Test p-values, fixed-sequence testing, a live guard.

A knob (the policy's lambda, a confidence threshold, patience) sets how early inputs stop. Its risk is
binary per input (the early prediction disagrees with full depth, or is wrong where full depth is right),
so the calibration split summarises each knob as k risk events out of n inputs.

Calibration is Learn then Test (Angelopoulos, Bates, Candes, Jordan, Lei 2021, arXiv 2110.01052), as CALM
does for early exit (Schuster et al., NeurIPS 2022): the knobs are ordered from most to least conservative
before the calibration data is seen; each knob's null "risk > eps" gets a valid p-value; fixed-sequence
testing walks that order while p <= delta and keeps the last knob rejected. With probability >= 1 - delta
over an i.i.d. calibration draw, the kept knob's risk on new inputs from the same distribution is <= eps.

On the device, shadow frames (full depth run beside the early exit) feed LiveGuard, which says when the
live risk has drifted above eps. numpy only: the device has no scipy.
"""
import math

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit

METHODS = ("hb", "binomial")

# log(i!) below this from math.lgamma, above it from Stirling's series (truncation error < 1e-19 there)
_SMALL = 256
_LOG_FACT = np.array([math.lgamma(i + 1.0) for i in range(_SMALL)])
_BISECT_STEPS = 64  # halvings of [0, 1]: below float resolution for any bound that matters


def _check_level(value, name: str) -> float:
    """`value` as a probability strictly inside (0, 1) (an epsilon or a delta), else one line."""
    try:
        x = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if not 0.0 < x < 1.0:
        raise EdgeError(f"{name} {value!r} | must be a number between 0 and 1 (exclusive)", Exit.BAD_INPUT)
    return x


def _check_method(method) -> None:
    if method not in METHODS:
        raise EdgeError(f"p-value method {method!r} | must be one of {', '.join(METHODS)}", Exit.BAD_INPUT)


def _check_count(k, n) -> tuple:
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return k, n


def _log_factorial(x: np.ndarray) -> np.ndarray:
    """log(x!) for an integer array x >= 0."""
    x = np.asarray(x, np.int64)
    out = np.empty(x.shape, np.float64)
    small = x < _SMALL
    out[small] = _LOG_FACT[x[small]]
    big = x[~small].astype(np.float64)
    inv2 = 1.0 / (big * big)
    out[~small] = (big * np.log(big) - big + 0.5 * np.log(2.0 * np.pi * big)
                   + (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 / 1260.0)) / big)
    return out


def _tail_sum(lo: int, hi: int, n: int, p: float) -> float:
    """sum of P(Bin(n, p) = i) for i = lo..hi, 0 < p < 1, summed in log space so no term underflows."""
    i = np.arange(lo, hi + 1, dtype=np.int64)
    log_pmf = (_log_factorial(np.array([n]))[0] - _log_factorial(i) - _log_factorial(n - i)
               + i * math.log(p) + (n - i) * math.log1p(-p))
    top = log_pmf.max()
    return math.exp(top + math.log(np.exp(log_pmf - top).sum()))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), exact up to float rounding (relative error ~1e-12 at n = 2000, ~1e-9 at 1e6).

    Summed in log space over the tail that does not hold the mean (the other is 1 minus it), so a small
    probability keeps its relative precision. k < 0 gives 0, k >= n gives 1; n >= 0, 0 <= p <= 1.
    """
    k, n, p = int(k), int(n), float(p)
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    if k < 0:
        return 0.0
    if k >= n or p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    # Away from the mean the terms fall at least geometrically, by the ratio r of the two at the tail's
    # edge, so those past _reach(r) add < e^-40 of the sum: skipped (a speed-up at large n).
    if k < n * p:
        r = k * (1 - p) / ((n - k + 1) * p)
        return min(1.0, _tail_sum(max(0, k - _reach(r, n)), k, n, p))
    r = (n - k - 1) * p / ((k + 2) * (1 - p))
    return max(0.0, 1.0 - _tail_sum(k + 1, min(n, k + 1 + _reach(r, n)), n, p))


def _reach(r: float, n: int) -> int:
    """Terms to keep past a tail's edge whose neighbour ratio is r < 1: r^w / (1 - r) <= e^-40."""
    gap = 1.0 - r
    return n if gap < 1e-12 else min(n, int(math.ceil((40.0 + math.log(1.0 / gap)) / gap)))


def _kl(a: float, b: float) -> float:
    """kl(a || b) between Bernoulli(a) and Bernoulli(b), 0 < b < 1, with 0 log 0 = 0."""
    out = a * math.log(a / b) if a > 0 else 0.0
    return out + ((1 - a) * math.log((1 - a) / (1 - b)) if a < 1 else 0.0)


def pvalue(k: int, n: int, eps: float, method: str = "hb") -> float:
    """A valid p-value for the null "risk >= eps" (super-uniform under it) from k risk events in n inputs.

    "binomial": P(Bin(n, eps) <= k), exact for a binary loss (LTT's binary-loss p-value, section 3.2 as
    MAPIE cites it). "hb": Hoeffding-Bentkus, valid for any loss in [0, 1] (LTT's p^HB; the authors'
    reference code is aangelopoulos/ltt, core/bounds.py, `hb_p_value`):
        min(exp(-n * kl(min(r, eps) || eps)), e * P(Bin(n, eps) <= ceil(n * r))),  r = k / n,
    so its Hoeffding part is 1 once r >= eps, and at k = 0 both parts give (1 - eps)^n.
    With n = 0 nothing can be rejected: 1.0. k: risk events (e.g. disagreements), 0 <= k <= n;
    eps in (0, 1); method one of METHODS. Small means "risk < eps" is well supported.
    """
    k, n = _check_count(k, n)
    eps = _check_level(eps, "epsilon")
    _check_method(method)
    if n == 0:
        return 1.0
    tail = binomial_cdf(k, n, eps)
    if method == "binomial":
        return tail
    hoeffding = math.exp(-n * _kl(min(k / n, eps), eps))
    return min(1.0, hoeffding, math.e * tail)


def fixed_sequence(pvalues, delta: float) -> int:
    """Fixed-sequence testing: walk the p-values in their pre-set order while p <= delta (a NaN stops).

    Every test spends all of delta, with no multiplicity correction: the order was fixed before the data
    was seen, and the walk stops at the first non-rejection. Returns the index of the last hypothesis
    rejected; -1 when the first is not.
    """
    delta = _check_level(delta, "delta")
    last = -1
    for i, p in enumerate(pvalues):
        if not p <= delta:
            break
        last = i
    return last


def guaranteed_index(counts, n: int, eps: float, delta: float, method: str = "hb") -> int:
    """The Learn-then-Test choice: the last knob whose null "risk > eps" fixed-sequence testing rejects.

    Args:
        counts: counts[i] = risk events of knob i among the n calibration inputs, knobs ordered most
            conservative first (the order fixed before looking at the data).
        n: calibration inputs (the same n for every knob).
        eps: the risk level, in (0, 1).
        delta: the error level, in (0, 1).
        method: the p-value, one of METHODS.
    Returns:
        the knob's index; -1 when not even the first knob is certified (run full depth).
    """
    delta, eps = _check_level(delta, "delta"), _check_level(eps, "epsilon")
    _check_method(method)
    # p-values computed lazily: the walk usually stops long before the last knob
    return fixed_sequence((pvalue(k, n, eps, method) for k in counts), delta)


def upper_bound(k: int, n: int, delta: float) -> float:
    """The one-sided (1 - delta) Clopper-Pearson upper confidence bound on the risk from k of n.

    The largest p with P(Bin(n, p) <= k) >= delta, by bisection (the cdf falls as p grows), rounded up so
    coverage holds; k = 0 gives 1 - delta^(1/n), n == 0 gives 1.0.
    """
    k, n = _check_count(k, n)
    delta = _check_level(delta, "delta")
    if k >= n:
        return 1.0
    lo, hi = 0.0, 1.0  # invariant: cdf(lo) >= delta > cdf(hi)
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if binomial_cdf(k, n, mid) >= delta:
            lo = mid
        else:
            hi = mid
    return hi


def lower_bound(k: int, n: int, delta: float) -> float:
    """The one-sided (1 - delta) Clopper-Pearson lower bound from k of n: the smallest p with
    P(Bin(n, p) >= k) >= delta (the mirror of upper_bound); 0.0 when k == 0 or n == 0."""
    k, n = _check_count(k, n)
    return 0.0 if k == 0 else 1.0 - upper_bound(n - k, n, delta)


class LiveGuard:
    """An anytime-valid drift test on the live risk, fed one shadow comparison at a time.

    The method is a union (Bonferroni) bound over a fixed geometric schedule of looks, the alpha
    spending of group-sequential testing (Pocock 1977; Lan and DeMets 1983): look j happens at the
    pre-set count n_j (n_0 = first_look, n_{j+1} = ceil(ratio * n_j)) and spends delta_j =
    delta / ((j + 1)(j + 2)); these sum to delta, so the statement holds however long the stream is
    watched and wherever the caller stops. Each look is exact: Clopper-Pearson bounds at delta_j.

    The guard steps (`add` returns True) when a look's lower bound exceeds eps, i.e. when the exact
    test of "live risk <= eps" (p = P(Bin(n_j, eps) >= events)) rejects at delta_j. So on an i.i.d.
    stream whose risk is <= eps, P(ever stepping) <= delta. Stepping when the *upper* bound exceeds eps
    would be no test: with few frames it always does (20 frames, 0 events: 0.14 at delta_0 = 0.05).
    `bound` is the look's upper bound, for reporting: "live risk <= bound", valid at every look at once.

    After a step the caller moves to a more conservative knob and calls reset(): the new knob's guard
    spends its own delta (a fresh schedule), so each knob has its own false-alarm rate of at most delta.
    """

    def __init__(self, eps: float, delta: float, first_look: int = 20, ratio: float = 1.5):
        """Args:
            eps: the risk level guarded, in (0, 1).
            delta: the false-alarm probability over the whole stream, in (0, 1).
            first_look: frames before the first look (>= 1).
            ratio: growth of the look counts (> 1): looks are O(log n), so late ones stay powerful.
        """
        self.eps = _check_level(eps, "epsilon")
        self.delta = _check_level(delta, "delta")
        if isinstance(first_look, bool) or int(first_look) != first_look or first_look < 1:
            raise EdgeError(f"first look {first_look!r} | must be a whole number of frames >= 1", Exit.BAD_INPUT)
        if not float(ratio) > 1.0:
            raise EdgeError(f"look ratio {ratio!r} | must be a number > 1", Exit.BAD_INPUT)
        self.first_look, self.ratio = int(first_look), float(ratio)
        self.reset()

    def _after(self, n_j: int) -> int:
        # the small tolerance keeps ceil(20 * 1.1) at 22, not 23 from float rounding
        return max(n_j + 1, int(math.ceil(n_j * self.ratio - 1e-9)))

    def schedule(self, upto: int) -> list:
        """The looks up to `upto` frames: [(n_j, delta_j), ...], the same for every stream."""
        out, n_j = [], self.first_look
        while n_j <= upto:
            out.append((n_j, self.delta / ((len(out) + 1) * (len(out) + 2))))
            n_j = self._after(n_j)
        return out

    def reset(self) -> None:
        """Fresh counts and schedule (after a step, for the new knob)."""
        self.n = self.events = self.looks = 0
        self.next_look = self.first_look
        self._last, self._bounds = None, None  # the last look's (events, n, delta_j); its bounds, when asked

    def add(self, event: bool) -> bool:
        """Record one shadow frame (`event` True: a risk event, e.g. the early exit disagreed). Returns
        True iff this frame was a look and the live risk is then shown above eps (the caller steps)."""
        self.n += 1
        self.events += int(bool(event))
        if self.n < self.next_look:
            return False
        d = self.delta / ((self.looks + 1) * (self.looks + 2))
        self._last, self._bounds = (self.events, self.n, d), None
        self.looks += 1
        self.next_look = self._after(self.n)
        # P(Bin(n, eps) >= events), as a lower tail of the mirrored binomial
        return binomial_cdf(self.n - self.events, self.n, 1.0 - self.eps) <= d

    def _look_bounds(self) -> tuple:
        if self._last is None:
            return 0.0, 1.0
        if self._bounds is None:
            k, n, d = self._last
            self._bounds = (lower_bound(k, n, d), upper_bound(k, n, d))
        return self._bounds

    @property
    def bound(self) -> float:
        """The last look's upper confidence bound on the live risk (1.0 before the first look)."""
        return self._look_bounds()[1]

    @property
    def lower(self) -> float:
        """The last look's lower confidence bound (0.0 before the first look); above eps means a step."""
        return self._look_bounds()[0]

    def state(self) -> dict:
        """What a status line or a JSON record reports."""
        lower, upper = self._look_bounds()
        return {"n": self.n, "events": self.events, "bound": upper, "lower": lower, "looks": self.looks,
                "eps": self.eps, "delta": self.delta, "next_look": self.next_look}
