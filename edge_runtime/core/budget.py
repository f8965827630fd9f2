"""The budget, one owner: what the price of compute (lambda) is for a call, and where it comes from.

A budget is one of
  - a fixed lambda (`--budget`, `Runtime.open(budget=...)`, a per-call `budget=`);
  - a deadline (`--deadline-ms`): per input, the lowest lambda (the most accurate) whose mean latency,
    measured by `edge-infer bench` for this backend, precision, mode and batch size, fits the time left;
  - neither: the operating point chosen on the validation split for the mode (the manifest's
    controller.operating_points), resolved here and nowhere else.
Fixed and full modes spend no budget: their lambda is None and nothing reports one.

Lambda >= 0 everywhere (training, sweeps, export, the runtime): 0 prices compute at nothing, the most
accurate point, and a validation split may choose it. Giving both a lambda and a deadline is an error.
"""
import math
from dataclasses import dataclass

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit

LAMBDA_MIN = 0.0
SWEEP_LOW, SWEEP_HIGH = 1e-3, 3.0   # the eval sweep's range: from "depth is nearly free" to "all stop early"


def check_lambda(value, where: str = "budget", exit: Exit = Exit.BAD_INPUT) -> float:
    """`value` as a lambda: a finite number >= 0 (bool is not a number here), else one line naming
    `where` it was given (a flag, an argument, a manifest field)."""
    try:
        lam = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        lam = float("nan")
    if not (math.isfinite(lam) and lam >= LAMBDA_MIN):
        raise EdgeError(f"{where} {value!r} | lambda must be a number >= 0", exit)
    return lam


def lambda_sweep(n: int, high: float = SWEEP_HIGH, zero: bool = False) -> list:
    """The lambdas a sweep tries (the controller's evaluation, export's operating points, bench's curve):
    n log-spaced values from SWEEP_LOW to `high`, after 0 when `zero` (oneshot at 0 is the most accurate
    point; the policy never saw 0 in training, whose range is PPOConfig's lam_min..lam_max)."""
    return ([0.0] if zero else []) + np.geomspace(SWEEP_LOW, high, n).tolist()


@dataclass(frozen=True)
class Budget:
    """What the user gave: a lambda, a deadline, or nothing (the validated operating point)."""
    lam: float = None
    deadline_ms: float = None

    @classmethod
    def of(cls, value=None, deadline_ms=None) -> "Budget":
        """A checked Budget from a Budget, a lambda or None, and an optional deadline in ms."""
        if isinstance(value, Budget):
            if deadline_ms is not None:
                raise EdgeError("budget | give a Budget or a deadline, not both", Exit.BAD_INPUT)
            return value
        lam = None if value is None else check_lambda(value)
        if deadline_ms is not None:
            try:
                deadline_ms = float(deadline_ms)
            except (TypeError, ValueError):
                deadline_ms = float("nan")
            if not (math.isfinite(deadline_ms) and deadline_ms > 0):
                raise EdgeError(f"deadline {deadline_ms} ms | must be a number of milliseconds > 0", Exit.BAD_INPUT)
            if lam is not None:
                raise EdgeError("--budget and --deadline-ms | give one: a fixed lambda, or a deadline that picks "
                                "lambda per input", Exit.BAD_INPUT)
        return cls(lam, deadline_ms)

    def describe(self) -> str:
        if self.lam is not None:
            return f"lambda {self.lam:.4g}"
        if self.deadline_ms is not None:
            return f"deadline {self.deadline_ms:g} ms"
        return "the validated operating point"


class Curve:
    """Mean latency per lambda (one bench measurement): the deadline's lookup table."""

    def __init__(self, points: list):
        pairs = sorted((float(p["lambda"]), float(p["mean_ms"])) for p in points)
        self.lambdas = np.array([p[0] for p in pairs])
        self.ms = np.array([p[1] for p in pairs])

    def pick(self, left_ms: float) -> float:
        """The lowest lambda whose latency fits `left_ms`; the cheapest one when none fits."""
        fits = np.nonzero(self.ms <= left_ms)[0]
        return float(self.lambdas[fits[0]] if len(fits) else self.lambdas[-1])


class Spend:
    """A Budget bound to one engine directory and build: `lam(mode, spent_ms)` per call."""

    def __init__(self, budget: Budget, points: dict, curves: dict, key: str):
        """Args:
            budget: what the user gave.
            points: controller.operating_points ({mode: {lambda, ...}}).
            curves: {mode: Curve} measured for this build at batch 1 (edge_runtime.core.engine_dir).
            key: the build's name in messages, e.g. "onnxruntime fp32, 1 thread(s)".
        """
        self.budget, self.points, self.curves, self.key = budget, points, curves, key
        self.defaults = {m: check_lambda(points[m]["lambda"], f"manifest controller.operating_points.{m}.lambda")
                         for m in ("progressive", "oneshot")}
        if budget.deadline_ms is not None and not curves:
            raise EdgeError(f"--deadline-ms | no latency measured for {key} on this engine directory; run "
                            "edge-infer bench --engine-dir DIR with the same backend, precision and threads first",
                            Exit.NOT_FOUND)

    def lam(self, mode, spent_ms: float = 0.0):
        """The lambda of one call in `mode` (None for fixed modes), `spent_ms` already used of a deadline."""
        if mode.name == "fixed":
            return None
        if self.budget.lam is not None:
            return self.budget.lam
        if self.budget.deadline_ms is not None:
            curve = self.curves.get(mode.name)
            if curve is None:
                raise EdgeError(f"--deadline-ms | no latency curve for {mode.name} mode ({self.key}); run edge-infer "
                                f"bench --mode {mode.name} first", Exit.NOT_FOUND)
            return curve.pick(self.budget.deadline_ms - spent_ms)
        return self.defaults[mode.name]
