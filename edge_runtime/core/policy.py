"""The level-2 policy: an LSTM cell stepped once per exit boundary.

`policy_state` builds the input and `PolicyArrays.step` runs the cell in numpy: the reference, batched
over whole splits on the workstation (PPO, sweeps) and checked against the torch module and its ONNX export
to 1e-5. The device runs `boundary`, one call into C (edge_runtime._kernels.boundary, built at install) per
boundary that takes the exit's confidence from its logits, fills the state, takes the agreement with
earlier exits and steps the cell for every row of
the batch: between two segment runs the caches are cold and each numpy call costs microseconds, about 45 us
per boundary on this CPU against about 10 for the one call (hidden 64, batch 1; under 1 us of it is the call
itself). It is tested equal to policy_state + step.
"""
from dataclasses import dataclass

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.kernels import kernels

ARRAYS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_actor", "b_actor", "w_critic", "b_critic")


def state_size(num_exits: int) -> int:
    return num_exits + 9


def policy_state(proba: np.ndarray, k: int, conf: np.ndarray, agree: np.ndarray, used: float,
                 lam, use_predictor: bool = True) -> np.ndarray:
    """(N, E + 9) float32 policy input at exit boundary k.

    proba: (N, E) the predictor's distribution over the required exit (zeroed when the policy was trained
    without it), its mass up to k, this exit's confidence (max prob, margin, entropy), agreement with earlier
    exits (fraction, previous), compute used so far (fraction of full depth), position k / (E - 1), log lambda.
    """
    n, E = proba.shape
    x = np.zeros((n, E + 9), np.float32)
    if use_predictor:
        x[:, :E] = proba
        x[:, E] = proba[:, :k + 1].sum(1)
    x[:, E + 1:E + 4] = conf
    x[:, E + 4:E + 6] = agree
    x[:, E + 6:E + 8] = used, k / max(E - 1, 1)
    x[:, E + 8] = np.log(lam)
    return x


@dataclass
class PolicyArrays:
    """An LSTM cell (PyTorch gate order i, f, g, o) with a stop-logit actor and a value critic."""
    w_ih: np.ndarray      # (4H, S)
    w_hh: np.ndarray      # (4H, H)
    b_ih: np.ndarray      # (4H,)
    b_hh: np.ndarray      # (4H,)
    w_actor: np.ndarray   # (H,)
    b_actor: np.ndarray   # ()
    w_critic: np.ndarray  # (H,)
    b_critic: np.ndarray  # ()
    use_predictor: bool = True

    @property
    def hidden(self) -> int:
        return self.w_hh.shape[1]

    def zero_state(self, n: int):
        return np.zeros((n, self.hidden), np.float32), np.zeros((n, self.hidden), np.float32)

    def __post_init__(self):
        # One matmul and one tanh per step: [x, h] @ W + b with the gate rows ordered i, f, o, g, and the
        # i, f, o rows halved, since sigmoid(z) = 0.5 + 0.5 tanh(z / 2). Actor and critic side by side.
        H = self.w_hh.shape[1]
        order = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]          # i f g o -> i f o g
        scale = np.r_[np.full(3 * H, 0.5), np.ones(H)].astype(np.float32)
        self._w = (np.concatenate([self.w_ih, self.w_hh], 1)[order] * scale[:, None]).T.copy()
        self._b = (self.b_ih + self.b_hh)[order] * scale
        self._heads = np.stack([self.w_actor, self.w_critic], 1)
        self._head_b = np.array([self.b_actor, self.b_critic], np.float32)
        # the same, packed for the device's compiled boundary: rows x, h, then bias; columns the four gates,
        # then the actor (weights on the h rows, its bias in the bias row)
        S = self.w_ih.shape[1]
        packed = np.zeros((S + H + 1, 4 * H + 1), np.float32)
        packed[:S + H, :4 * H], packed[S + H, :4 * H] = self._w, self._b
        packed[S:S + H, 4 * H], packed[S + H, 4 * H] = self.w_actor, self.b_actor
        self._packed = packed

    def step(self, x, h, c):
        """(stop logit (N,), value (N,), h', c') for input x (N, S) and state h, c (N, H)."""
        H = h.shape[1]
        t = np.concatenate([x, h], 1) @ self._w
        t += self._b
        np.tanh(t, out=t)                                   # (N, 4H): i f o as tanh(z / 2), then tanh(g)
        ifo = t[:, :3 * H]
        ifo *= 0.5
        ifo += 0.5                                          # sigmoid(i), sigmoid(f), sigmoid(o)
        c = ifo[:, H:2 * H] * c + ifo[:, :H] * t[:, 3 * H:]
        h = ifo[:, 2 * H:] * np.tanh(c)
        heads = h @ self._heads + self._head_b
        return heads[:, 0], heads[:, 1], h, c

    def rollout(self, proba: np.ndarray, lam: np.ndarray) -> tuple:
        """The device's per-row state for one batch: (n, S + 2H + E) float32 holding the policy input x
        (policy_state's layout, the columns fixed for the batch filled in), h, c and the predictor's
        cumulative distribution; and (n, E) int64 for each exit's argmax. `boundary` updates both in place;
        index their rows to drop some."""
        proba = np.ascontiguousarray(proba, np.float32)
        n, E = proba.shape
        st, preds = np.empty((n, state_size(E) + 2 * self.hidden + E), np.float32), np.empty((n, E), np.int64)
        kernels.start(proba, np.ascontiguousarray(lam, np.float32), self.use_predictor, st, preds)
        return st, preds

    def boundary(self, k: int, st: np.ndarray, preds: np.ndarray, logits: np.ndarray, used: np.ndarray,
                 out: np.ndarray = None) -> np.ndarray:
        """(n,) bool stop for every row at boundary k, stepping the rollout state `st` in place.

        preds: (n, E) int64 argmax of each exit so far, column k written here from logits (n, classes), whose
        confidence (edge_runtime.core.features.confidence) the kernel computes; used: (E,) float32 compute
        spent stopping at each exit, as a fraction of full depth. st and preds must be rollout's (C-contiguous
        float32, int64); logits and used of another dtype or layout are converted (the kernel reads
        C-contiguous float32 only, and says so with a TypeError). out: an (n,) bool array to write the answer
        into (default: a new one)."""
        stop = np.empty(len(st), bool) if out is None else out
        try:
            kernels.boundary(k, st, preds, logits, self._packed, used, stop)
        except TypeError:
            kernels.boundary(k, st, preds, f32(logits), self._packed, f32(used), stop)
        return stop

    def save(self, path) -> None:
        from edge_runtime.core.files import atomic_path
        with atomic_path(path) as tmp, open(tmp, "wb") as f:   # a file object: np.savez names it as given
            np.savez(f, use_predictor=np.array(self.use_predictor), **{k: getattr(self, k) for k in ARRAYS})

    @classmethod
    def load(cls, path) -> "PolicyArrays":
        try:
            with np.load(path) as z:
                return cls(**{k: z[k].astype(np.float32) for k in ARRAYS}, use_predictor=bool(z["use_predictor"]))
        except (OSError, ValueError, KeyError) as err:
            raise EdgeError(f"{path} | not a policy file ({err})", Exit.CORRUPT) from None


def f32(a) -> np.ndarray:
    """`a` as the kernels read it: a C-contiguous float32 array (itself when it is one)."""
    return np.ascontiguousarray(a, np.float32)
