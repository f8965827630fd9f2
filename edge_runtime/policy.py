"""The level-2 policy on the device: an LSTM cell stepped once per exit boundary, in numpy.

The same `policy_state` builds the input on the workstation (PPO training on cached exits) and here, and
`PolicyArrays.step` is checked against the torch module and its ONNX export to 1e-5.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgeError, Exit

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
    x = state_buffer(proba, lam, use_predictor)
    fill_boundary(x, k, proba[:, :k + 1].sum(1) if use_predictor else 0.0, conf, used)
    x[:, -5:-3] = agree
    return x


def state_buffer(proba: np.ndarray, lam, use_predictor: bool = True) -> np.ndarray:
    """A policy input with the columns that stay the same at every boundary filled in (the predictor's
    distribution and log lambda): the device fills the rest per boundary, in place."""
    n, E = proba.shape
    x = np.zeros((n, E + 9), np.float32)
    if use_predictor:
        x[:, :E] = proba
    x[:, E + 8] = np.log(lam)
    return x


def fill_boundary(x: np.ndarray, k: int, mass, conf: np.ndarray, used: float) -> None:
    """Boundary k's columns of the policy input `x`, but agreement (columns -5 and -4, left to the
    caller): the predictor's mass up to k, the exit's confidence, compute used and position."""
    E = x.shape[1] - 9
    x[:, E] = mass
    x[:, E + 1:E + 4] = conf
    x[:, E + 6:E + 8] = used, k / max(E - 1, 1)


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

    def save(self, path) -> None:
        tmp = Path(str(path) + ".tmp.npz")
        np.savez(tmp, use_predictor=np.array(self.use_predictor), **{k: getattr(self, k) for k in ARRAYS})
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> "PolicyArrays":
        try:
            with np.load(path) as z:
                return cls(**{k: z[k].astype(np.float32) for k in ARRAYS}, use_predictor=bool(z["use_predictor"]))
        except (OSError, ValueError, KeyError) as err:
            raise EdgeError(f"{path} | not a policy file ({err})", Exit.CORRUPT) from None
