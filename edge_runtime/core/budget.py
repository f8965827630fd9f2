"""The budget, one owner: what the price of compute (lambda) is for a call, and where it comes from.

A budget is one of
  - a fixed lambda (`--budget`, `Runtime.open(budget=...)`, a per-call `budget=`);
  - a deadline (`--deadline-ms`): per input, the lowest lambda (the most accurate) whose mean latency,
    measured by `edge-infer bench` for this backend, precision, mode and batch size, fits the time left;
  - a guarantee (`--max-disagreement EPS --confidence 1-DELTA`): the most aggressive lambda that Learn then
    Test certifies on the engine directory's calibration counts (controller.calibration: disagreements with
    full depth per lambda on the validation split), so that with probability >= 1 - delta over that split the
    disagreement with full depth on new inputs from the same distribution is <= eps; when no lambda is
    certified, full depth. With a deadline too, the guarantee wins: the deadline's lambda is capped at the
    certified one, and a call whose capped lambda's measured latency does not fit is counted. A live guard
    (LiveGuard, fed by shadow frames) steps to the next more conservative certified lambda when its anytime
    bound on the live disagreement exceeds eps: the stream may have drifted from the calibration data;
  - none of these: the operating point chosen on the validation split for the mode (the manifest's
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


def fraction(value, where: str) -> float:
    """A fraction in (0, 1) from 0.005, "0.5%" or "0.5 %": one line naming `where` otherwise."""
    text = str(value).strip()
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and 0 < v < 1):
        raise EdgeError(f"{where} {value} | a fraction between 0 and 1 (0.005 or 0.5%)", Exit.BAD_INPUT)
    return v


@dataclass(frozen=True)
class Budget:
    """What the user gave: a lambda, a deadline, a guarantee, or nothing (the validated operating point)."""
    lam: float = None
    deadline_ms: float = None
    max_disagreement: float = None     # eps of the guarantee
    confidence: float = None           # 1 - delta

    @classmethod
    def of(cls, value=None, deadline_ms=None, max_disagreement=None, confidence=None) -> "Budget":
        """A checked Budget from a Budget, a lambda or None, an optional deadline in ms, and an optional
        guarantee (max_disagreement, with confidence, default 0.9)."""
        if isinstance(value, Budget):
            if deadline_ms is not None or max_disagreement is not None:
                raise EdgeError("budget | give a Budget, or a deadline and a guarantee, not both", Exit.BAD_INPUT)
            return value
        if max_disagreement is not None:
            max_disagreement = fraction(max_disagreement, "--max-disagreement")
            confidence = fraction(0.9 if confidence is None else confidence, "--confidence")
            if value is not None:
                raise EdgeError("--budget and --max-disagreement | give one: a fixed lambda, or a guarantee that "
                                "certifies one", Exit.BAD_INPUT)
        elif confidence is not None:
            raise EdgeError("--confidence | goes with --max-disagreement", Exit.BAD_INPUT)
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
        return cls(lam, deadline_ms, max_disagreement, confidence)

    def describe(self) -> str:
        parts = []
        if self.lam is not None:
            parts.append(f"lambda {self.lam:.4g}")
        if self.max_disagreement is not None:
            parts.append(f"guarantee: disagreement with full depth <= {self.max_disagreement * 100:g} % with "
                         f"probability >= {self.confidence * 100:g} %")
        if self.deadline_ms is not None:
            parts.append(f"deadline {self.deadline_ms:g} ms")
        return ", ".join(parts) or "the validated operating point"


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

    def ms_at(self, lam: float) -> float:
        """The measured mean latency at `lam` (linear between the measured lambdas)."""
        return float(np.interp(lam, self.lambdas, self.ms))


class Certified:
    """One mode's guaranteed lambda (Learn then Test on the calibration counts) and its live guard.

    The calibration lists lambdas conservative first (ascending: lambda prices compute) with the number of
    validation inputs whose answer differs from full depth's. Fixed-sequence testing certifies a prefix of
    them (edge_runtime.core.guarantee.guaranteed_index); the point served is the prefix's last, the most
    aggressive certified one, and only certified lambdas are ever served. index -1: none is certified, the
    mode runs at full depth (which never disagrees with itself).
    """

    def __init__(self, mode: str, entry: dict, n: int, eps: float, delta: float, method: str = "hb"):
        from edge_runtime.core.guarantee import LiveGuard, guaranteed_index
        where = f"manifest controller.calibration.modes.{mode}"
        self.mode, self.n, self.eps, self.delta = mode, int(n), eps, delta
        self.values = [check_lambda(v, f"{where}.values", Exit.CORRUPT) for v in entry["values"]]
        if any(b <= a for a, b in zip(self.values, self.values[1:])):
            raise EdgeError(f"{where}.values | lambdas must be increasing (conservative first)", Exit.CORRUPT)
        self.counts = [int(c) for c in entry["disagreement"]]
        self.index = self.certified = guaranteed_index(self.counts, self.n, eps, delta, method)
        self.guard = LiveGuard(eps, delta)
        self.steps, self.over_deadline, self.shadow_frames = [], 0, 0

    @property
    def lam(self):
        """The lambda served now; None: full depth."""
        return None if self.index < 0 else self.values[self.index]

    def cap(self, lam: float):
        """The certified lambda nearest `lam` from the conservative side (the prefix's first when `lam` is
        more conservative than any of them); None: full depth."""
        if self.index < 0:
            return None
        allowed = [v for v in self.values[:self.index + 1] if v <= lam]
        return allowed[-1] if allowed else self.values[0]

    def observe(self, differs: bool):
        """One shadow frame; a step dict when the guard shows the live disagreement above eps (then a more
        conservative certified lambda, chosen by the drift measured, or full depth), else None."""
        self.shadow_frames += 1
        if self.index < 0 or not self.guard.add(bool(differs)):
            return None
        # stepped: the live disagreement is shown above eps (the look's lower bound), under continuous watch
        step = {"shadow_frame": self.shadow_frames, "from": self.lam, "to": None, "lower": self.guard.lower,
                "upper": self.guard.bound, "events": self.guard.events, "n": self.guard.n}
        # Where to: the drift the guard measured, live rate over this knob's calibration rate, scales every
        # knob's calibration rate alike (an estimate, not a promise: the guard goes on watching the new knob);
        # the most aggressive certified knob whose scaled rate is within eps and that is really more
        # conservative: fewer calibration disagreements, or, where the counts tie (a fine lambda grid, or
        # counts already at 0), at most half as far along the order (half the log-lambda range); else full depth.
        current = self.counts[self.index]
        scale = (self.guard.events / self.guard.n) / max(current / self.n, 1.0 / self.n)
        target = self.eps * self.n / scale
        fits = [j for j in range(self.index) if self.counts[j] <= target
                and (self.counts[j] < current or j <= self.index // 2)]
        self.index = fits[-1] if fits else -1
        step["drift"] = scale
        step["to"] = self.lam
        self.steps.append(step)
        self.guard.reset()
        return step

    def report(self) -> dict:
        return {"mode": self.mode, "max_disagreement": self.eps, "confidence": 1 - self.delta,
                "calibration": f"{self.counts[self.certified]} of {self.n} validation inputs disagree"
                               if self.certified >= 0 else f"no lambda certified on {self.n} validation inputs",
                "certified_lambda": None if self.certified < 0 else self.values[self.certified],
                "lambda_now": self.lam, "steps": list(self.steps), "guard": self.guard.state(),
                "shadow_frames": self.shadow_frames, "over_deadline": self.over_deadline}

    def describe(self) -> str:
        now = "full depth (no lambda certified)" if self.lam is None else f"lambda {self.lam:.4g}"
        return (f"guaranteed: disagreement with full depth <= {self.eps * 100:g} % with probability >= "
                f"{(1 - self.delta) * 100:g} % over the {self.n}-input calibration split (i.i.d. inputs), "
                f"{now}")


class Spend:
    """A Budget bound to one engine directory and build: `lam(mode, spent_ms)` per call."""

    def __init__(self, budget: Budget, points: dict, curves: dict, key: str, calibration: dict = None):
        """Args:
            budget: what the user gave.
            points: controller.operating_points ({mode: {lambda, ...}}).
            curves: {mode: Curve} measured for this build at batch 1 (edge_runtime.core.engine_dir).
            key: the build's name in messages, e.g. "onnxruntime fp32, 1 thread(s)".
            calibration: controller.calibration, the counts a guarantee is certified from.
        """
        self.budget, self.points, self.curves, self.key = budget, points, curves, key
        self.certified = {}
        if budget.max_disagreement is not None:
            if not calibration:
                raise EdgeError("--max-disagreement | this engine directory carries no calibration counts "
                                "(controller.calibration): export it again with this edge-model", Exit.NOT_FOUND)
            for m, entry in calibration["modes"].items():
                self.certified[m] = Certified(m, entry, calibration["n"], budget.max_disagreement,
                                              1 - budget.confidence, calibration.get("pvalue", "hb"))
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
        certified = self.certified.get(mode.name)
        if self.budget.deadline_ms is not None:
            curve = self.curves.get(mode.name)
            if curve is None:
                raise EdgeError(f"--deadline-ms | no latency curve for {mode.name} mode ({self.key}); run edge-infer "
                                f"bench --mode {mode.name} first", Exit.NOT_FOUND)
            left = self.budget.deadline_ms - spent_ms
            lam = curve.pick(left)
            if certified is not None:          # the guarantee wins; a call it makes miss the deadline is counted
                capped = certified.cap(lam)
                if capped != lam and (capped is None or curve.ms_at(capped) > left):
                    certified.over_deadline += 1
                lam = capped
            return lam
        if certified is not None:
            return certified.lam
        return self.defaults[mode.name]

    def observe(self, mode, differs: bool):
        """A shadow frame's verdict for the live guard of `mode` (a step dict when it stepped, else None)."""
        certified = self.certified.get(mode.name)
        return None if certified is None else certified.observe(differs)

    def guarantee(self, mode):
        """The Certified point of `mode` when a guarantee is in force, else None."""
        return self.certified.get(mode.name)
