"""The level-2 policy: an LSTM cell stepped once per exit boundary.

`policy_state` builds the input and `PolicyArrays.step` runs the cell in numpy: the reference, batched
over whole splits on the workstation (PPO, sweeps) and checked against the torch module and its ONNX export
to 1e-5. The device runs `boundary`, one compiled (numba) call per boundary that fills the state, takes
the agreement with earlier exits and steps the cell for every row of the batch: between two segment runs
the caches are cold and each numpy call costs microseconds, about 45 us per boundary on this CPU against
about 10 for the one call. It is tested equal to policy_state + step.
"""
from dataclasses import dataclass

import numba
import numpy as np

from edge_runtime.core.errors import EdgeError, Exit

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
        return _start(proba, lam.astype(np.float32, copy=False), self.hidden, self.use_predictor)

    def boundary(self, k: int, st: np.ndarray, preds: np.ndarray, logits: np.ndarray, conf: np.ndarray,
                 used: np.ndarray) -> np.ndarray:
        """(n,) bool stop for every row at boundary k, stepping the rollout state `st` in place.

        preds: (n, E) int64 argmax of each exit so far, column k written here from logits (n, classes);
        conf: (n, 3) this exit's confidence, from its segment's graph; used: (E,) float32 compute spent
        stopping at each exit, as a fraction of full depth."""
        return _boundary(k, st, preds, logits, conf, self._packed, used)

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


@numba.njit(cache=True)
def _start(proba, lam, hidden, use_predictor):
    """The rollout state with its fixed columns filled (the predictor's distribution and its running sum,
    log lambda), and the argmax table."""
    n, E = proba.shape
    S = E + 9
    mass0 = S + 2 * hidden
    st = np.zeros((n, mass0 + E), np.float32)
    for r in range(n):
        if use_predictor:
            total = 0.0
            for j in range(E):
                st[r, j] = proba[r, j]
                total += proba[r, j]
                st[r, mass0 + j] = total
        st[r, S - 1] = np.log(lam[r])
    return st, np.zeros((n, E), np.int64)


@numba.njit(cache=True)
def _boundary(k, st, preds, logits, conf, w, used):
    """This exit's argmax, policy_state's boundary columns, then PolicyArrays.step's cell (gates i f o g,
    i f o halved: sigmoid via tanh) and the actor, row by row; returns stop = actor logit > 0."""
    n, E = preds.shape
    S = E + 9
    H = (w.shape[1] - 1) // 4
    mass0 = S + 2 * H
    stop = np.zeros(n, np.bool_)
    g = np.empty(4 * H, np.float32)
    for r in range(n):
        preds[r, k] = np.argmax(logits[r])
        st[r, E] = st[r, mass0 + k]
        st[r, E + 1] = conf[r, 0]
        st[r, E + 2] = conf[r, 1]
        st[r, E + 3] = conf[r, 2]
        same = 0
        for j in range(k):
            same += preds[r, j] == preds[r, k]
        st[r, E + 4] = same / k if k > 0 else 0.0
        st[r, E + 5] = 1.0 if k > 0 and preds[r, k - 1] == preds[r, k] else 0.0
        st[r, E + 6] = used[k]
        st[r, E + 7] = k / max(E - 1, 1)
        g[:] = w[S + H, :4 * H]
        for i in range(S + H):          # [x, h] @ W: st holds x then h, side by side
            v = st[r, i]
            if v != 0.0:
                for j in range(4 * H):
                    g[j] += v * w[i, j]
        logit = w[S + H, 4 * H]
        for j in range(H):
            ig = 0.5 + 0.5 * np.tanh(g[j])
            fg = 0.5 + 0.5 * np.tanh(g[H + j])
            og = 0.5 + 0.5 * np.tanh(g[2 * H + j])
            cj = fg * st[r, S + H + j] + ig * np.tanh(g[3 * H + j])
            st[r, S + H + j] = cj
            hj = og * np.tanh(cj)
            st[r, S + j] = hj
            logit += hj * w[S + j, 4 * H]
        stop[r] = logit > 0.0
    return stop
