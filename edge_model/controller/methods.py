"""Every depth-selection method behind one step: `decide(boundary, state) -> (stop_mask, state)`.

`run(method, table, proba)` walks the exit boundaries once for the whole split (arrays, never a Python
`if` per input) and returns where each input stopped. The policy, the predictor modes and every
baseline (fixed, entropy, max-probability, patience, random, oracle) go through this one loop, so they
are measured by the same code on the same cached exits.
"""
from dataclasses import dataclass

import numpy as np

from edge_model.controller.table import ExitTable


@dataclass
class Boundary:
    """What a method may look at when exit k has just run (all arrays over the split)."""
    k: int
    num_exits: int
    preds: np.ndarray       # (N,) this exit's argmax
    conf: np.ndarray        # (N, 3) max prob, margin, normalised entropy
    agree: np.ndarray       # (N, 2) fraction of earlier exits agreeing, previous exit agrees
    used: float             # compute spent so far, fraction of full depth (progressive cost)
    proba: np.ndarray       # (N, E) predictor's distribution over the required exit (zeros if none)
    costs: np.ndarray       # (E,) plain depth cost of each exit, fraction of full depth
    correct: np.ndarray     # (N,) this exit is right: only the oracle may read these two
    solvable: np.ndarray    # (N,) some exit is right


def boundaries(table: ExitTable, proba=None):
    conf, agree, preds, correct = table.confidence, table.agreement, table.preds, table.correct
    solvable = correct.any(1)
    used = table.progressive_flops() / table.full_flops
    costs = table.flops / table.full_flops
    proba = np.zeros((len(table), table.num_exits), np.float32) if proba is None else proba
    for k in range(table.num_exits):
        yield Boundary(k, table.num_exits, preds[:, k], conf[:, k], agree[:, k], float(used[k]), proba, costs,
                       correct[:, k], solvable)


def run(method, table: ExitTable, proba=None) -> np.ndarray:
    """(N,) exit index where each input stopped (the last exit stops everyone left)."""
    n, last = len(table), table.num_exits - 1
    stop_at = np.full(n, last)
    active = np.ones(n, bool)
    state = method.init(n)
    for b in boundaries(table, proba):
        stop, state = method.decide(b, state)
        stop = active & (stop | (b.k == last))
        stop_at[stop] = b.k
        active &= ~stop
    return stop_at


class Fixed:
    """Always depth exit k (`fixed:D`; the last exit is `full`)."""
    cost = "plain"

    def __init__(self, k: int):
        self.k = k

    def init(self, n):
        return None

    def decide(self, b, state):
        return np.full(len(b.preds), b.k >= self.k), state


class Threshold:
    """Early exit on the current exit's confidence: entropy <= t (DeeBERT, BranchyNet) or max prob >= t."""
    cost = "progressive"

    def __init__(self, kind: str, t: float):
        self.kind, self.t = kind, t

    def init(self, n):
        return None

    def decide(self, b, state):
        stop = b.conf[:, 2] <= self.t if self.kind == "entropy" else b.conf[:, 0] >= self.t
        return stop, state


class Patience:
    """PABEE: stop once `patience` consecutive exits predicted the same label."""
    cost = "progressive"

    def __init__(self, patience: int):
        self.patience = patience

    def init(self, n):
        return {"streak": np.zeros(n, int), "last": np.full(n, -1)}

    def decide(self, b, state):
        streak = np.where(b.preds == state["last"], state["streak"] + 1, 0)
        return streak >= self.patience, {"streak": streak, "last": b.preds}


class RandomDepth:
    """A random exit per input whose expected cost equals `target` (a fraction of full depth): a mix of
    the two fixed depths that bracket it. Seeded."""
    cost = "plain"

    def __init__(self, target: float, seed: int = 0):
        self.target, self.seed = target, seed

    def init(self, n):
        return {"n": n, "pick": None}

    def decide(self, b, state):
        if state["pick"] is None:
            hi = int(np.clip(np.searchsorted(b.costs, self.target), 0, b.num_exits - 1))
            lo = max(hi - 1, 0)
            span = b.costs[hi] - b.costs[lo]
            p_hi = 1.0 if span == 0 else float(np.clip((self.target - b.costs[lo]) / span, 0, 1))
            rng = np.random.default_rng(self.seed)
            state["pick"] = np.where(rng.random(state["n"]) < p_hi, hi, lo)
        return state["pick"] <= b.k, state


class PredictorOnly:
    """Level 1 alone: the shallowest exit whose cumulative predicted probability reaches t."""
    cost = "oneshot"

    def __init__(self, t: float):
        self.t = t

    def init(self, n):
        return None

    def decide(self, b, state):
        return b.proba[:, :b.k + 1].sum(1) >= self.t, state


class OneShot:
    """`oneshot` mode: after the first exit fix d = argmax_d P(l* <= d) - lambda * cost(d) from the predictor."""
    cost = "oneshot"

    def __init__(self, lam: float):
        self.lam = lam

    def init(self, n):
        return None

    def decide(self, b, state):
        if state is None:
            state = (np.cumsum(b.proba, 1) - self.lam * b.costs[None]).argmax(1)
        return state <= b.k, state


class Oracle:
    """Stops at the first correct exit (first exit when none is): the unreachable reference."""
    cost = "plain"

    def init(self, n):
        return None

    def decide(self, b, state):
        return b.correct | ~b.solvable, state


def per_input_flops(table: ExitTable, stop_at: np.ndarray, cost: str) -> np.ndarray:
    """FLOPs each input spent. progressive: every head on the way ran; oneshot: the first exit's head ran
    to read the predictor's inputs, then the plain depth; plain: the depth-d model alone."""
    if cost == "progressive":
        return table.progressive_flops()[stop_at]
    if cost == "oneshot":
        return table.flops[stop_at] + table.head_flops * (stop_at > 0)
    return table.flops[stop_at]


def outcome(table: ExitTable, stop_at: np.ndarray, cost: str, extra_flops: float = 0.0) -> dict:
    """Accuracy, mean FLOPs (+ the controller's own FLOPs per input) and the depth histogram."""
    flops = per_input_flops(table, stop_at, cost) + extra_flops
    return {"accuracy": float(table.correct[np.arange(len(table)), stop_at].mean()),
            "mean_flops": float(flops.mean()), "flops_fraction": float(flops.mean() / table.full_flops),
            "depth_histogram": np.bincount(stop_at, minlength=table.num_exits).tolist()}
