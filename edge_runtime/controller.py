"""The two-level controller on the device: what decides, at each exit boundary, which rows stop.

Level 1 runs once, after segment 0: its graph outputs the features (edge_runtime.features, the definition
the workstation fitted on, computed in the graph) and the LightGBM predictor (predictor.onnx) turns them
into a distribution over the exit each input needs (edge_runtime.predictor walks its trees).
Level 2 is the LSTM policy's numpy step (policy.npz) at every boundary, fed by the same `policy_state`
PPO trained on. Modes:
  progressive   the policy at every boundary (the paper's controller)
  oneshot       after exit 0, fix d = argmax_d P(l* <= d) - lambda * cost(d) from the predictor
  fixed:D       depth D (a variant's depth); full: the last exit
Rows are handled as arrays: `Decision.keep(rows)` drops the rows that stopped, so the scheduler can run
the next segment on the rest (batched early exit) with each row's state intact.
"""
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import EdgeError, Exit
from edge_runtime.predictor import TreeEnsemble

MODES = ("progressive", "oneshot", "fixed:D", "full")


@dataclass(frozen=True)
class Mode:
    name: str           # progressive | oneshot | fixed
    exit_index: int = -1   # fixed: the exit to stop at

    @classmethod
    def parse(cls, text: str, depths: list) -> "Mode":
        """'progressive', 'oneshot', 'full' or 'fixed:D' with D one of `depths` (layer numbers)."""
        text = str(text).strip()
        if text in ("progressive", "oneshot"):
            return cls(text)
        if text == "full":
            return cls("fixed", len(depths) - 1)
        if text.startswith("fixed:"):
            try:
                d = int(text.split(":", 1)[1])
            except ValueError:
                d = None
            if d not in depths:
                raise EdgeError(f"mode '{text}' | D must be one of the depths {', '.join(map(str, depths))}",
                                Exit.BAD_INPUT)
            return cls("fixed", depths.index(d))
        raise EdgeError(f"mode '{text}' | unknown (modes: {', '.join(MODES)})", Exit.BAD_INPUT)

    def __str__(self):
        return self.name if self.name != "fixed" else f"fixed exit {self.exit_index}"


def check_budget(lam) -> float:
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise EdgeError(f"budget {lam!r} | not a number", Exit.BAD_INPUT) from None
    if not (np.isfinite(lam) and lam > 0):
        raise EdgeError(f"budget {lam} | lambda must be a positive number", Exit.BAD_INPUT)
    return lam


class Decision:
    """The controller's per-row state for one batch, from segment 0 to the last row's stop."""

    def __init__(self, controller: "Controller", mode: Mode, lam: np.ndarray, proba: np.ndarray):
        self.c, self.mode, self.lam, self.proba = controller, mode, lam, proba
        self.state = None
        if mode.name == "progressive":
            self.state, self.preds = controller.policy.rollout(proba, lam)
        else:
            self.preds = np.zeros((len(lam), controller.num_exits), np.int64)   # each exit's argmax so far
        self.target = None
        if mode.name == "oneshot":
            score = np.cumsum(proba, 1) - lam[:, None] * controller.plain[None]
            self.target = score.argmax(1)

    def stop(self, k: int, logits: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """(n,) bool: which rows stop at exit k, given that exit's logits (n, classes) and confidence
        features (n, 3), both from segment k's graph."""
        n, last = len(logits), self.c.num_exits - 1
        if self.state is not None and k < last:      # progressive: one compiled call does it all
            return self.c.policy.boundary(k, self.state, self.preds, logits, conf, self.c.used)
        self.preds[:, k] = logits.argmax(-1)
        if k == last:
            return np.ones(n, bool)
        if self.mode.name == "fixed":
            return np.full(n, k >= self.mode.exit_index)
        return self.target <= k                     # oneshot

    def keep(self, rows: np.ndarray) -> None:
        """Keep only `rows` (indices or a mask) for the boundaries to come."""
        self.lam, self.proba, self.preds = self.lam[rows], self.proba[rows], self.preds[rows]
        if self.state is not None:
            self.state = self.state[rows]
        if self.target is not None:
            self.target = self.target[rows]


class Controller:
    """Level 1 and level 2 of an opened EngineDir."""

    def __init__(self, engine):
        ctrl = engine.controller
        self.num_exits = len(engine.segments)
        self.policy = engine.policy_arrays()
        self.used = np.asarray(ctrl["costs"]["used"], np.float32)
        self.plain = np.asarray(ctrl["costs"]["plain"], np.float64)
        self.operating_points = ctrl["operating_points"]
        self.predictor = TreeEnsemble.from_onnx(engine.file(ctrl["predictor"]["file"]))
        if self.predictor.classes != self.num_exits:
            raise EdgeError(f"{ctrl['predictor']['file']} | {self.predictor.classes} classes for {self.num_exits} "
                            "exits", Exit.CORRUPT)

    def default_budget(self, mode: Mode) -> float:
        point = self.operating_points.get(mode.name)
        return float(point["lambda"]) if point else 1.0

    def start(self, mode: Mode, lam: np.ndarray, features: np.ndarray) -> Decision:
        """The decision state after segment 0, from its `features` output; level 1 runs here unless the
        mode never reads it."""
        if mode.name == "fixed":
            proba = np.zeros((len(lam), self.num_exits), np.float32)
        else:
            proba = self.predictor(features)
        return Decision(self, mode, lam, proba)
