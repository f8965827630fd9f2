"""The two-level controller on the device: what decides, at each exit boundary, which rows stop.

Level 1 runs once, after segment 0: its graph outputs the features (edge_runtime.core.features, the definition
the workstation fitted on, computed in the graph) and the LightGBM predictor (predictor.onnx) turns them
into a distribution over the exit each input needs (edge_runtime.core.predictor walks its trees).
Level 2 is the LSTM policy's numpy step (policy.npz) at every boundary, fed by the same `policy_state`
PPO trained on. Modes:
  progressive   the policy at every boundary (the paper's controller)
  oneshot       after exit 0, fix d = argmax_d P(l* <= d) - lambda * cost(d) from the predictor
  fixed:D       depth D (a variant's depth); full: the last exit
Rows are handled as arrays: `Decision.keep(rows)` drops the rows that stopped, so the scheduler can run
the next segment on the rest (batched early exit) with each row's state intact.
"""
from dataclasses import dataclass

import numba
import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.policy import _boundary, _start
from edge_runtime.core.predictor import TreeEnsemble, _forest

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


class Decision:
    """The controller's per-row state for one batch, from segment 0 to the last row's stop.
    Make it with Controller.start, which also decides exit 0."""

    def __init__(self, controller: "Controller", mode: Mode, lam: np.ndarray, proba: np.ndarray, preds,
                 state=None, first_stop=None):
        self.c, self.mode, self.preds = controller, mode, preds
        self.state, self.first_stop = state, first_stop
        self.target = None
        if mode.name == "oneshot":
            score = np.cumsum(proba, 1) - lam[:, None] * controller.plain[None]
            self.target = score.argmax(1)

    def stop(self, k: int, logits: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """(n,) bool: which rows stop at exit k, given that exit's logits (n, classes) and confidence
        features (n, 3), both from segment k's graph."""
        n, last = len(logits), self.c.num_exits - 1
        if k == 0 and self.first_stop is not None:   # decided with level 1, in the same call
            return self.first_stop
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
        self.preds = self.preds[rows]
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
        self.predictor = TreeEnsemble.from_onnx(engine.file(ctrl["predictor"]["file"]))
        if self.predictor.classes != self.num_exits:
            raise EdgeError(f"{ctrl['predictor']['file']} | {self.predictor.classes} classes for {self.num_exits} "
                            "exits", Exit.CORRUPT)

    def warm_up(self, classes: int) -> None:
        """Compile the numba functions now (or load them from numba's cache), so no frame pays for it:
        one progressive decision on a dummy row of each dtype the segments return."""
        E = self.num_exits
        logits, conf = np.zeros((1, classes), np.float32), np.zeros((1, 3), np.float32)
        features = np.zeros((1, self.predictor.num_features), np.float32)
        decision = self.start(Mode("progressive"), np.ones(1, np.float32), features, logits, conf)
        if E > 2:
            decision.stop(1, logits, conf)
        self.predictor(features)

    def start(self, mode: Mode, lam: np.ndarray, features: np.ndarray, logits: np.ndarray,
              conf: np.ndarray) -> Decision:
        """The decision state after segment 0, from its outputs (features, logits, conf). In progressive
        mode level 1 and the first policy step run in one compiled call (each call from Python costs a few
        microseconds); fixed modes never read the predictor."""
        n = len(lam)
        if mode.name == "fixed":
            return Decision(self, mode, lam, np.zeros((n, self.num_exits), np.float32),
                            np.zeros((n, self.num_exits), np.int64))
        t, p = self.predictor, self.policy
        if mode.name == "progressive" and self.num_exits > 1:
            proba, state, preds, stop = _first_boundary(
                np.ascontiguousarray(features, np.float32), logits, conf, lam.astype(np.float32, copy=False),
                t.nodes, t.nan_true, t.roots, t.classes, t.softmax, p.hidden, p.use_predictor, p._packed, self.used)
            return Decision(self, mode, lam, proba, preds, state, stop)
        return Decision(self, mode, lam, t(features), np.zeros((n, self.num_exits), np.int64))


@numba.njit(cache=True)
def _first_boundary(features, logits, conf, lam, nodes, nan_true, roots, classes, softmax, hidden,
                    use_predictor, w, used):
    """Level 1 (the trees), the rollout state and the policy's step at exit 0, in one call."""
    proba = _forest(features, nodes, nan_true, roots, classes, softmax)
    state, preds = _start(proba, lam, hidden, use_predictor)
    return proba, state, preds, _boundary(0, state, preds, logits, conf, w, used)
