"""edge_runtime.core.guarantee: the binomial tail, the LTT p-values, fixed-sequence testing, the
Clopper-Pearson bounds and the live guard, against hand and exact values and by seeded simulation.

Monte-Carlo checks allow SLACK standard errors above the nominal level (a false failure needs a
4-sigma draw; the seeds are fixed anyway, so each test gives the same answer every run)."""
import math
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest

from edge_runtime.core.errors import EdgeError
from edge_runtime.core.guarantee import (METHODS, LiveGuard, binomial_cdf, fixed_sequence, guaranteed_index,
                                         lower_bound, pvalue, upper_bound)

SLACK = 4.0


def slack(level: float, draws: int) -> float:
    return SLACK * math.sqrt(level * (1 - level) / draws)


def exact_cdf(k: int, n: int, p) -> float:
    """sum of comb(n, i) p^i (1 - p)^(n - i), i <= k, in whole numbers over p's exact denominator."""
    p = Fraction(p)
    a, d = p.numerator, p.denominator
    return float(Fraction(sum(math.comb(n, i) * a ** i * (d - a) ** (n - i) for i in range(k + 1)), d ** n))


# ---- binomial_cdf

def test_binomial_cdf_small_n_matches_comb_sum():
    for n in range(1, 13):
        for p in (0.03, 0.3, 0.5, 0.77):
            for k in range(n + 1):
                assert binomial_cdf(k, n, p) == pytest.approx(exact_cdf(k, n, p), rel=1e-12, abs=1e-300)


def test_binomial_cdf_n2000_matches_fractions():
    for p, ks in ((Fraction(1, 20), (0, 1, 50, 80, 100, 120, 160)), (Fraction(37, 100), (600, 700, 740, 800))):
        for k in ks:
            assert binomial_cdf(k, 2000, float(p)) == pytest.approx(exact_cdf(k, 2000, p), rel=1e-9, abs=1e-300)


def test_binomial_cdf_n1e6_matches_high_precision_sum():
    """n = 1e6, p = 1/20: a 40-digit Decimal recurrence over the pmf, summed from 0 (exact to ~1e-30)."""
    getcontext().prec = 40
    n, p = 10 ** 6, Decimal(1) / Decimal(20)
    wanted = {48000: None, 49500: None, 50000: None, 50500: None}
    term, total = (1 - p) ** n, Decimal(0)
    for i in range(max(wanted) + 1):
        total += term
        if i in wanted:
            wanted[i] = float(total)
        term = term * (n - i) / (i + 1) * p / (1 - p)
    for k, want in wanted.items():
        assert binomial_cdf(k, n, 0.05) == pytest.approx(want, rel=1e-8)
    # and the normal approximation agrees at the mean to its own O(1/sqrt(n)) accuracy
    sd = math.sqrt(n * 0.05 * 0.95)
    assert abs(binomial_cdf(50000, n, 0.05) - 0.5 * (1 + math.erf(0.5 / sd / math.sqrt(2)))) < 1e-3


def test_binomial_cdf_edges():
    assert binomial_cdf(-1, 10, 0.3) == 0.0
    assert binomial_cdf(10, 10, 0.3) == binomial_cdf(11, 10, 0.3) == 1.0
    assert binomial_cdf(0, 10, 0.0) == 1.0
    assert binomial_cdf(9, 10, 1.0) == 0.0 and binomial_cdf(10, 10, 1.0) == 1.0
    assert binomial_cdf(0, 0, 0.4) == 1.0
    assert binomial_cdf(0, 10, 0.3) == pytest.approx(0.7 ** 10, rel=1e-13)
    assert binomial_cdf(9, 10, 0.3) == pytest.approx(1 - 0.3 ** 10, rel=1e-13)
    for bad in ((1, -1, 0.5), (1, 10, -0.1), (1, 10, 1.5)):
        with pytest.raises(ValueError):
            binomial_cdf(*bad)


def test_binomial_cdf_monotone():
    ps = np.linspace(0.0, 1.0, 201)
    for k, n in ((5, 50), (0, 50), (300, 10000), (5000, 10000)):
        values = [binomial_cdf(k, n, p) for p in ps]
        assert all(a >= b for a, b in zip(values, values[1:])), (k, n)
        assert values[0] == 1.0 and values[-1] == 0.0
    in_k = [binomial_cdf(k, 300, 0.1) for k in range(-1, 302)]
    assert all(a <= b for a, b in zip(in_k, in_k[1:]))


# ---- p-values

def test_pvalue_hand_values():
    b = 0.95 ** 100
    assert pvalue(0, 100, 0.05, "binomial") == pytest.approx(b, rel=1e-13)
    # HB at k = 0: min(exp(-100 kl(0 || 0.05)), e * 0.95^100), kl(0 || p) = -log(1 - p)
    assert pvalue(0, 100, 0.05, "hb") == pytest.approx(min(math.exp(100 * math.log(0.95)), math.e * b), rel=1e-12)
    tail3 = sum(math.comb(100, i) * 0.05 ** i * 0.95 ** (100 - i) for i in range(4))
    kl = 0.03 * math.log(0.03 / 0.05) + 0.97 * math.log(0.97 / 0.95)
    assert pvalue(3, 100, 0.05, "binomial") == pytest.approx(tail3, rel=1e-12)
    assert pvalue(3, 100, 0.05, "hb") == pytest.approx(min(math.exp(-100 * kl), math.e * tail3), rel=1e-12)
    assert pvalue(0, 0, 0.05) == 1.0


def test_pvalue_hb_is_one_when_rate_reaches_eps():
    for n, eps in ((100, 0.05), (1000, 0.01), (37, 0.2)):
        for k in range(math.ceil(n * eps), n + 1):
            assert pvalue(k, n, eps, "hb") == 1.0
        assert pvalue(math.ceil(n * eps) - 1, n, eps, "hb") < 1.0


def test_pvalue_monotone_in_k_and_n():
    for method in METHODS:
        in_k = [pvalue(k, 500, 0.05, method) for k in range(0, 60)]
        assert all(a <= b for a, b in zip(in_k, in_k[1:])) and in_k[0] < in_k[-1]
        in_n = [pvalue(10, n, 0.05, method) for n in range(10, 2000, 37)]
        assert all(a >= b for a, b in zip(in_n, in_n[1:])) and in_n[0] > in_n[-1]
        # the binomial tail never exceeds HB (Chernoff), so "binomial" is the more powerful of the two
        assert all(pvalue(k, 500, 0.05, "binomial") <= pvalue(k, 500, 0.05, "hb") for k in range(60))


def test_pvalue_bad_arguments():
    for kwargs in ({"method": "bonferroni"}, {"eps": 0.0}, {"eps": 1.0}, {"eps": "x"}, {"eps": True}):
        args = {"k": 1, "n": 10, "eps": 0.1, **kwargs}
        with pytest.raises(EdgeError):
            pvalue(**args)
    with pytest.raises(ValueError):
        pvalue(11, 10, 0.1)


@pytest.mark.parametrize("n,eps", [(200, 0.1), (1000, 0.02), (5000, 0.005)])
def test_pvalues_are_valid_by_simulation(n, eps):
    """At the null's boundary (risk = eps) and inside it (1.5 eps): P(p <= delta) <= delta."""
    rng = np.random.default_rng(1234 + n)
    draws = 100_000
    for method in METHODS:
        # p depends on k only: one table, then the draws index it
        table = np.array([pvalue(k, n, eps, method) for k in range(min(n, int(3 * n * eps) + 50) + 1)])
        for risk in (eps, 1.5 * eps):
            k = np.minimum(rng.binomial(n, risk, size=draws), len(table) - 1)  # clipped k have p = 1 anyway
            for delta in (0.05, 0.1, 0.2):
                rate = float((table[k] <= delta).mean())
                assert rate <= delta + slack(delta, draws), (method, risk, delta, rate)


# ---- fixed-sequence testing and the LTT choice

def test_fixed_sequence_walks_and_stops():
    assert fixed_sequence([0.01, 0.02, 0.2, 0.01], 0.05) == 1      # stops at 0.2, never sees the last 0.01
    assert fixed_sequence([0.2, 0.01, 0.01], 0.05) == -1
    assert fixed_sequence([], 0.05) == -1
    assert fixed_sequence([0.001, 0.05, 0.04], 0.05) == 2          # p == delta rejects
    assert fixed_sequence([0.01, float("nan"), 0.01], 0.05) == 0
    assert fixed_sequence(iter([0.01, 0.03]), 0.05) == 1
    with pytest.raises(EdgeError):
        fixed_sequence([0.01], 1.5)


def test_guaranteed_index_hand_counts():
    n, eps, delta = 500, 0.02, 0.1
    # p-values of these counts, binomial: 4e-5, 5e-4, 0.010, 0.33, 1, 0.003; HB: 4e-5, 1e-3, 0.027, 0.80, 1,
    # 0.007. Both walks stop at count 8, and never reach the 2 after it
    counts = [0, 1, 3, 8, 20, 2]
    assert guaranteed_index(counts, n, eps, delta, "binomial") == 2
    assert guaranteed_index(counts, n, eps, delta, "hb") == 2
    assert guaranteed_index([9, 0, 0], n, eps, delta) == -1
    assert guaranteed_index([], n, eps, delta) == -1
    # HB is the more cautious: never a later knob than binomial
    rng = np.random.default_rng(7)
    for _ in range(50):
        c = np.sort(rng.integers(0, 25, size=12))
        assert guaranteed_index(c, n, eps, delta, "hb") <= guaranteed_index(c, n, eps, delta, "binomial")
    with pytest.raises(EdgeError):
        guaranteed_index([], n, eps, delta, "nope")


# ---- Clopper-Pearson bounds

def test_upper_bound_known_values():
    for n in (1, 10, 100, 2000):
        for delta in (0.01, 0.1, 0.5):
            assert upper_bound(0, n, delta) == pytest.approx(1 - delta ** (1 / n), rel=1e-9)
            assert lower_bound(n, n, delta) == pytest.approx(delta ** (1 / n), rel=1e-9)
    assert upper_bound(0, 0, 0.1) == 1.0 and upper_bound(7, 7, 0.1) == 1.0
    assert lower_bound(0, 50, 0.1) == 0.0 and lower_bound(0, 0, 0.1) == 0.0
    for k, n in ((3, 40), (120, 1000)):
        ub, lb = upper_bound(k, n, 0.05), lower_bound(k, n, 0.05)
        assert lb < k / n < ub
        assert binomial_cdf(k, n, ub) == pytest.approx(0.05, rel=1e-9)
        assert 1 - binomial_cdf(k - 1, n, lb) == pytest.approx(0.05, rel=1e-9)


def test_bounds_cover_by_simulation():
    n, delta, draws = 60, 0.1, 50_000
    ub = np.array([upper_bound(k, n, delta) for k in range(n + 1)])
    lb = np.array([lower_bound(k, n, delta) for k in range(n + 1)])
    rng = np.random.default_rng(99)
    for p in (0.02, 0.1, 0.3, 0.5, 0.9):
        k = rng.binomial(n, p, size=draws)
        assert float((p > ub[k]).mean()) <= delta + slack(delta, draws), p
        assert float((p < lb[k]).mean()) <= delta + slack(delta, draws), p


# ---- the live guard

def critical_counts(guard: LiveGuard, upto: int) -> tuple:
    """Per look of the guard's schedule: (n_j, the fewest events that step there), by bisection on k."""
    looks, crit = [], []
    for n_j, d in guard.schedule(upto):
        lo, hi = 0, n_j + 1            # P(Bin(n_j, eps) >= k) <= d first holds at hi; n_j + 1: never
        while lo < hi:
            mid = (lo + hi) // 2
            if binomial_cdf(n_j - mid, n_j, 1 - guard.eps) <= d:
                hi = mid
            else:
                lo = mid + 1
        looks.append(n_j)
        crit.append(lo)
    return np.array(looks), np.array(crit)


def first_steps(events: np.ndarray, looks: np.ndarray, crit: np.ndarray) -> np.ndarray:
    """Per stream (row), the frame count at which the guard first steps; 0 when it never does."""
    counts = np.cumsum(events, axis=1, dtype=np.int32)[:, looks - 1]   # (runs, looks)
    hit = counts >= crit
    return np.where(hit.any(axis=1), looks[hit.argmax(axis=1)], 0)


def test_live_guard_schedule():
    g = LiveGuard(0.05, 0.1)
    sched = g.schedule(20_000)
    assert [n for n, _ in sched[:6]] == [20, 30, 45, 68, 102, 153]
    assert [d for _, d in sched[:2]] == pytest.approx([0.05, 0.1 / 6])
    assert sum(d for _, d in sched) < 0.1 and len(sched) == 18
    assert [n for n, _ in LiveGuard(0.05, 0.1, first_look=20, ratio=1.1).schedule(30)] == [20, 22, 25, 28]


def test_live_guard_false_alarms_at_most_delta():
    """i.i.d. streams of 20,000 frames at risk eps / 2 and at the boundary eps: P(ever step) <= delta."""
    eps, delta, frames, runs = 0.05, 0.1, 20_000, 400
    guard = LiveGuard(eps, delta)
    looks, crit = critical_counts(guard, frames)
    rng = np.random.default_rng(2024)
    rates = {}
    for risk in (0.5 * eps, eps):
        events = rng.random((runs, frames)) < risk
        steps = first_steps(events, looks, crit)
        rates[risk] = float((steps > 0).mean())
        assert rates[risk] <= delta + slack(delta, runs), (risk, rates[risk])
        # the class itself, on a few of these streams, steps exactly where the vectorised rule says
        for row in range(5):
            g = LiveGuard(eps, delta)
            stepped = next((i + 1 for i, e in enumerate(events[row]) if g.add(bool(e))), 0)
            assert stepped == steps[row]
    assert rates[0.5 * eps] <= rates[eps]


def test_live_guard_steps_on_drift_within_computed_frames():
    """At risk 3 eps every stream steps, by the first look where missing it has probability < 1e-6."""
    eps, delta, frames, runs = 0.05, 0.1, 2_000, 200
    guard = LiveGuard(eps, delta)
    looks, crit = critical_counts(guard, frames)
    miss = [binomial_cdf(c - 1, n, 3 * eps) for n, c in zip(looks, crit)]   # P(no step at look j)
    deadline = int(looks[next(j for j, m in enumerate(miss) if m < 1e-6)])
    assert deadline <= 1000        # eps = 5 %, delta = 10 %: detected within a thousand frames
    events = np.random.default_rng(5).random((runs, frames)) < 3 * eps
    steps = first_steps(events, looks, crit)
    assert (steps > 0).all() and steps.max() <= deadline
    for row in range(5):
        g = LiveGuard(eps, delta)
        stepped = next((i + 1 for i, e in enumerate(events[row]) if g.add(bool(e))), 0)
        assert stepped == steps[row]


def test_live_guard_state_bounds_and_reset():
    g = LiveGuard(0.05, 0.1, first_look=20)
    assert g.state() == {"n": 0, "events": 0, "bound": 1.0, "lower": 0.0, "looks": 0, "eps": 0.05,
                         "delta": 0.1, "next_look": 20}
    assert not any(g.add(False) for _ in range(19)) and g.bound == 1.0 and g.looks == 0
    assert not g.add(False)                                  # look 0 at n = 20, delta_0 = 0.05
    assert g.looks == 1 and g.next_look == 30 and g.lower == 0.0
    assert g.bound == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-9)   # 0.139 > eps, yet no step
    stepped = [g.add(True) for _ in range(10)]               # 10 of 30 frames: far above 5 %
    assert stepped == [False] * 9 + [True]
    s = g.state()
    assert (s["n"], s["events"], s["looks"], s["next_look"]) == (30, 10, 2, 45)
    assert s["lower"] > 0.05 and s["lower"] < 10 / 30 < s["bound"]
    assert s["bound"] == pytest.approx(upper_bound(10, 30, 0.1 / 6))
    g.reset()
    assert g.state() == {"n": 0, "events": 0, "bound": 1.0, "lower": 0.0, "looks": 0, "eps": 0.05,
                         "delta": 0.1, "next_look": 20}


def test_live_guard_bad_arguments():
    for args in ((0.0, 0.1), (0.05, 1.0), (0.05, 0.1, 0), (0.05, 0.1, 2.5), (0.05, 0.1, 20, 1.0)):
        with pytest.raises(EdgeError):
            LiveGuard(*args)
