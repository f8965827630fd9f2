"""The two-level controller on the device: what decides, at each exit boundary, which rows stop.

Level 1 runs once, after segment 0: the features (edge_runtime.core.features, the definition the workstation
fitted on) come from segment 0's feed, hidden_out and logits in one C call, and the LightGBM predictor
(predictor.onnx) turns them into a distribution over the exit each input needs (edge_runtime.core.predictor
walks its trees). Level 2 is the LSTM policy (policy.npz), stepped at every boundary in C
(edge_runtime.core.policy) on the same `policy_state` input PPO trained on, the exit's confidence taken from
its logits in the same call. Modes:
  progressive   the policy at every boundary (the paper's controller)
  oneshot       after exit 0, fix d = argmax_d P(l* <= d) - lambda * cost(d) from the predictor
  fixed:D       depth D (a variant's depth); full: the last exit
Rows are handled as arrays: `Decision.keep(rows)` drops the rows that stopped, so the scheduler can run
the next segment on the rest (batched early exit) with each row's state intact.
"""
import threading
from dataclasses import dataclass

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.chain import HIDDEN_OUT
from edge_runtime.core.kernels import kernels
from edge_runtime.core.policy import state_size
from edge_runtime.core.predictor import TreeEnsemble

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

    def __init__(self, controller: "Controller", mode: Mode, preds=None, state=None, first_stop=None, target=None):
        """preds, state: progressive's argmax table and rollout state (edge_runtime.core.policy); first_stop:
        exit 0's decision; target: oneshot's exit per row, argmax_d P(l* <= d) - lambda * plain cost(d)."""
        self.c, self.mode, self.preds = controller, mode, preds
        self.state, self.first_stop, self.target = state, first_stop, target
        self.stop_out = None if first_stop is None or len(first_stop) != 1 else first_stop   # batch 1: reused
    def stop(self, k: int, logits: np.ndarray) -> np.ndarray:
        """(n,) bool: which rows stop at exit k, given that exit's logits (n, classes)."""
        last = self.c.num_exits - 1
        if k == 0 and self.first_stop is not None:   # decided with level 1, in the same call
            return self.first_stop
        if self.state is not None and k < last:      # progressive: one compiled call does it all
            return self.c.policy.boundary(k, self.state, self.preds, logits, self.c.used, self.stop_out)
        if k == last:
            return np.ones(len(logits), bool)
        if self.mode.name == "fixed":
            return np.full(len(logits), k >= self.mode.exit_index)
        return self.target <= k                     # oneshot

    def keep(self, rows: np.ndarray) -> None:
        """Keep only `rows` (indices or a mask) for the boundaries to come."""
        self.stop_out = None
        if self.preds is not None:
            self.preds = self.preds[rows]
        if self.state is not None:
            self.state = self.state[rows]
        if self.target is not None:
            self.target = self.target[rows]


class Buffers:
    """The arrays one decision writes, for n rows, and the kernels' argument tails built around them.
    Batch 1 reuses one set per thread (Controller.buffers): no numpy allocation between two segment runs."""

    def __init__(self, c: "Controller", n: int):
        t, p, E = c.predictor, c.policy, c.num_exits
        self.lam = np.empty(n, np.float32)
        self.features, self.proba = np.empty((n, t.num_features), np.float32), np.empty((n, E), np.float32)
        self.preds, self.stop = np.empty((n, E), np.int64), np.empty(n, bool)
        self.state = np.empty((n, state_size(E) + 2 * p.hidden + E), np.float32)
        self.target = np.empty(n, np.int64)
        self.made_for = (t, p)     # a controller whose predictor or policy is replaced needs new tails
        self.first = (self.features, self.lam, t.nodes, t.nan_true, t.roots, t.softmax, p.use_predictor, p._packed,
                      c.used, self.proba, self.state, self.preds, self.stop)
        self.oneshot = (self.features, self.lam, t.nodes, t.nan_true, t.roots, t.softmax, c.plain, self.proba,
                        self.target)


class Controller:
    """Level 1 and level 2 of an opened EngineDir."""

    def __init__(self, engine):
        ctrl = engine.controller
        self.num_exits = len(engine.segments)
        self.policy = engine.policy_arrays()
        self.used = np.asarray(ctrl["costs"]["used"], np.float32)
        self.plain = np.asarray(ctrl["costs"]["plain"], np.float64)
        self.predictor = TreeEnsemble.load(engine.file(ctrl["predictor_trees"]["file"]))
        if self.predictor.classes != self.num_exits:
            raise EdgeError(f"{ctrl['predictor_trees']['file']} | {self.predictor.classes} classes for {self.num_exits} "
                            "exits", Exit.CORRUPT)
        self.projection = engine.projection()
        if self.projection.weight.shape[1] + 6 != self.predictor.num_features:
            raise EdgeError(f"{ctrl['projection']['file']} | {self.projection.weight.shape[1]} projected features, the "
                            f"predictor reads {self.predictor.num_features - 6}", Exit.CORRUPT)
        self.text = engine.task["kind"] == "text"
        self.max_len = float(engine.task["preprocess"].get("max_len", 0))
        self.input_specs = engine.segments[0]["inputs"]
        self.hidden_spec = next(o for o in engine.segments[0]["outputs"] if o["name"] == HIDDEN_OUT)
        self._first_boundary, self._oneshot = kernels.first_boundary, kernels.oneshot   # not built: one line, here
        self._local = threading.local()    # batch 1's Buffers, one set per thread

    def warm_up(self, classes: int) -> None:
        """One dummy decision of each adaptive mode: nothing to compile (the C kernels are built at install),
        but engine arrays that do not fit each other fail here, at open, not on the first frame."""
        feed = {i["name"]: np.zeros([1] + i["shape"][1:], i["dtype"]) for i in self.input_specs}
        host = {"logits": np.zeros((1, classes), np.float32),
                HIDDEN_OUT: np.zeros([1] + self.hidden_spec["shape"][1:], np.float32)}
        for mode in (Mode("progressive"), Mode("oneshot")):
            decision = self.start(mode, 1.0, feed, host)
            if self.num_exits > 2:
                decision.stop(1, host["logits"])

    def feature_inputs(self, feed: dict, host: dict) -> tuple:
        """The kernels' first 8 arguments: segment 0's pixels or mask, hidden_out, logits, the projection."""
        p = self.projection
        pixels, mask = (None, feed["attention_mask"]) if self.text else (feed["pixels"], None)
        return (pixels, mask, host[HIDDEN_OUT], host["logits"], p.weight, p.bias, p.eps, self.max_len)

    @staticmethod
    def converted(args: tuple) -> tuple:
        """`args` with the arrays the kernels read made C-contiguous float32 (int64 for a mask)."""
        return tuple(a if not isinstance(a, np.ndarray) else
                     np.ascontiguousarray(a, np.int64 if a.dtype.kind in "iub" else np.float32) for a in args)

    def call(self, kernel, inputs: tuple, rest: tuple) -> None:
        try:
            kernel(*inputs, *rest)
        except TypeError:           # an input not C-contiguous float32 (all the kernels read): convert, once
            kernel(*self.converted(inputs), *rest)

    def features(self, feed: dict, host: dict) -> np.ndarray:
        """(n, 6 + P) float32 controller features from segment 0's feed and host outputs (logits, hidden_out):
        edge_runtime.core.features.from_segment_0, in one C call."""
        out = np.empty((len(host["logits"]), self.predictor.num_features), np.float32)
        self.call(kernels.features, self.feature_inputs(feed, host), (out,))
        return out

    def buffers(self, n: int) -> Buffers:
        if n != 1:
            return Buffers(self, n)
        b = getattr(self._local, "one", None)
        if b is None or b.made_for[0] is not self.predictor or b.made_for[1] is not self.policy:
            b = self._local.one = Buffers(self, 1)
        return b

    def start(self, mode: Mode, lam, feed: dict, host: dict) -> Decision:
        """The decision state after segment 0, from its feed and host outputs (logits, hidden_out), in one C
        call per mode: progressive's features, level 1, the rollout state and the first policy step
        (edge_runtime._kernels.first_boundary), or oneshot's features, level 1 and each row's exit
        (oneshot). Between two segment runs the caches are cold and every further call into numpy costs
        microseconds; fixed modes never read the predictor.

        Args:
            lam: the budget, one float for every row.
        """
        if mode.name == "fixed":
            return Decision(self, mode)
        b = self.buffers(len(host["logits"]))
        b.lam[:] = lam
        inputs = self.feature_inputs(feed, host)
        if mode.name == "progressive" and self.num_exits > 1:
            self.call(self._first_boundary, inputs, b.first)
            return Decision(self, mode, b.preds, b.state, b.stop)
        self.call(self._oneshot, inputs, b.oneshot)
        return Decision(self, mode, target=b.target)
