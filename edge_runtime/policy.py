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
    n, E = proba.shape
    p = proba if use_predictor else np.zeros_like(proba)
    lam = np.broadcast_to(np.asarray(lam, np.float32), (n,))
    cols = [p, p[:, :k + 1].sum(1, keepdims=True), conf, agree, np.full((n, 1), used),
            np.full((n, 1), k / max(E - 1, 1)), np.log(lam)[:, None]]
    return np.concatenate(cols, 1).astype(np.float32)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


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

    def step(self, x, h, c):
        """(stop logit (N,), value (N,), h', c') for input x (N, S) and state h, c (N, H)."""
        gates = x @ self.w_ih.T + self.b_ih + h @ self.w_hh.T + self.b_hh        # (N, 4H)
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        return h @ self.w_actor + self.b_actor, h @ self.w_critic + self.b_critic, h, c

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
