"""Level 2: an LSTM policy stepped at each exit boundary, trained with PPO on cached exits.

Episode: one training input and one budget lambda (log-uniform, fed to the policy, so one policy
serves the whole accuracy/compute curve). At exit k the policy stops or continues; the last exit stops.
Reward: +1 for a correct answer at the stop, minus lambda times the compute spent (fraction of full
depth, charged as it is spent), plus potential-based shaping F = Phi(s') - Phi(s) with
Phi(s) = the current exit's max probability and Phi(terminal) = 0 (gamma = 1), which leaves the
optimal policy unchanged (Ng, Harada and Russell, 1999) while giving a signal at every step.
Because the exits are cached, the state sequence of an episode does not depend on the actions (they
only decide where it ends), so one LSTM pass over all boundaries scores every step at once.
"""
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_model.controller.methods import Boundary
from edge_model.controller.table import ExitTable
from edge_runtime.core.budget import check_lambda
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.policy import PolicyArrays, policy_state, state_size


@dataclass
class PPOConfig:
    hidden: int = 64
    updates: int = 400          # PPO iterations (about 0.2-0.4 s each at 7 exits on one core)
    episodes: int = 2048        # episodes per iteration
    epochs: int = 4             # passes over each batch of episodes
    minibatch: int = 2048
    lr: float = 3e-3
    clip: float = 0.2
    gae_lambda: float = 0.95
    entropy: float = 0.01
    value_coef: float = 0.5
    lam_min: float = 0.005      # the budget knob's training range (log-uniform)
    lam_max: float = 2.0
    dense: bool = True          # False: the whole reward at the stop, no shaping (the ablation)
    use_predictor: bool = True  # False: predictor output zeroed in the state (the ablation)
    seed: int = 0


class LSTMPolicy(nn.Module):
    def __init__(self, state: int, hidden: int):
        super().__init__()
        self.cell = nn.LSTMCell(state, hidden)
        self.actor = nn.Linear(hidden, 1)
        self.critic = nn.Linear(hidden, 1)

    def forward(self, x, h, c):
        """One boundary: (stop logit (N,), value (N,), h', c'). nn.LSTMCell's arithmetic written out with
        slices, because its fused export uses a Split form that opset 17 rejects."""
        H = self.cell.hidden_size
        gates = F.linear(x, self.cell.weight_ih, self.cell.bias_ih) + F.linear(h, self.cell.weight_hh, self.cell.bias_hh)
        i, f = torch.sigmoid(gates[:, :H]), torch.sigmoid(gates[:, H:2 * H])
        g, o = torch.tanh(gates[:, 2 * H:3 * H]), torch.sigmoid(gates[:, 3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return self.actor(h)[:, 0], self.critic(h)[:, 0], h, c

    def unroll(self, xs):
        """(stop logits, values), each (B, E), over a whole (B, E, S) state sequence."""
        B, E, _ = xs.shape
        h = c = xs.new_zeros(B, self.cell.hidden_size)
        logits, values = [], []
        for k in range(E):
            logit, value, h, c = self(xs[:, k], h, c)
            logits.append(logit)
            values.append(value)
        return torch.stack(logits, 1), torch.stack(values, 1)

    def arrays(self, use_predictor: bool) -> PolicyArrays:
        f = lambda t: t.detach().cpu().numpy().astype(np.float32)   # noqa: E731
        return PolicyArrays(f(self.cell.weight_ih), f(self.cell.weight_hh), f(self.cell.bias_ih),
                            f(self.cell.bias_hh), f(self.actor.weight[0]), f(self.actor.bias[0]),
                            f(self.critic.weight[0]), f(self.critic.bias[0]), use_predictor)


def step_flops(num_exits: int, hidden: int) -> int:
    """Matmul FLOPs of one policy step: the LSTM's two gate products and the two heads."""
    return 2 * 4 * hidden * (state_size(num_exits) + hidden) + 2 * 2 * hidden


def table_states(table: ExitTable, proba, lam, use_predictor: bool) -> np.ndarray:
    """(N, E, S) the policy's input at every boundary, for per-input lambdas `lam` (N,)."""
    conf, agree = table.confidence, table.agreement
    used = table.progressive_flops() / table.full_flops
    return np.stack([policy_state(proba, k, conf[:, k], agree[:, k], used[k], lam, use_predictor)
                     for k in range(table.num_exits)], 1)


def episode_rewards(stop, correct, maxprob, used, lam, dense: bool):
    """(B, E) rewards of episodes that stop at exit `stop` (B,): the arithmetic of the module docstring.

    correct, maxprob: (B, E); used: (E,) cumulative compute fraction; lam: (B,).
    Undiscounted, every episode's rewards add up to correct[stop] - lam * used[stop] - dense * maxprob[0].
    """
    B, E = correct.shape
    k = np.arange(E)[None]
    live = k <= stop[:, None]
    at_stop = k == stop[:, None]
    if not dense:
        total = correct[np.arange(B), stop] - lam * used[stop]
        return np.where(at_stop, total[:, None], 0.0)
    spend = np.diff(np.concatenate([[0.0], used]))[None] * lam[:, None]        # compute charged at exit k
    nxt = np.concatenate([maxprob[:, 1:], np.zeros((B, 1))], 1)
    shaping = np.where(at_stop, -maxprob, nxt - maxprob)                         # Phi(s') - Phi(s), Phi(end) = 0
    return np.where(live, -spend + shaping + at_stop * correct, 0.0)


def gae(rewards, values, stop, lam_gae: float):
    """Advantages and returns (B, E) with gamma = 1; nothing after the stop."""
    B, E = rewards.shape
    adv = np.zeros((B, E))
    last = np.zeros(B)
    for k in reversed(range(E)):
        nxt = values[:, k + 1] if k + 1 < E else np.zeros(B)
        nxt = np.where(k < stop, nxt, 0.0)
        delta = rewards[:, k] + nxt - values[:, k]
        last = delta + lam_gae * np.where(k < stop, last, 0.0)
        adv[:, k] = np.where(k <= stop, last, 0.0)
    return adv, adv + values


def train_policy(table: ExitTable, proba, cfg: PPOConfig, progress: bool = True, log_every: int = 10):
    """PPO on the table's episodes. Returns (LSTMPolicy, log: list of per-update dicts)."""
    from tqdm import tqdm
    torch.manual_seed(cfg.seed)
    lo, hi = check_lambda(cfg.lam_min, "lam_min"), check_lambda(cfg.lam_max, "lam_max")
    if not 0 < lo < hi:   # log-uniform sampling needs 0 < min < max
        raise EdgeError(f"lam_min {lo}, lam_max {hi} | the training range needs 0 < min < max", Exit.BAD_INPUT)
    rng = np.random.default_rng(cfg.seed)
    E = table.num_exits
    policy = LSTMPolicy(state_size(E), cfg.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    correct = table.correct.astype(np.float64)
    maxprob = table.confidence[..., 0].astype(np.float64)
    used = table.progressive_flops() / table.full_flops
    proba = np.zeros((len(table), E), np.float32) if proba is None else proba
    log, start = [], time.time()
    for update in tqdm(range(cfg.updates), desc="ppo", disable=not progress, mininterval=2.0, leave=False):
        idx = rng.integers(0, len(table), cfg.episodes)
        lam = np.exp(rng.uniform(np.log(cfg.lam_min), np.log(cfg.lam_max), cfg.episodes)).astype(np.float32)
        xs = torch.from_numpy(table_states(table.subset(idx), proba[idx], lam, cfg.use_predictor))
        with torch.no_grad():
            logits, values = policy.unroll(xs)
            stop_p = torch.sigmoid(logits)
            acts = torch.bernoulli(stop_p, generator=None).numpy().astype(bool)
        acts[:, -1] = True                                       # the last exit always stops
        stop = acts.argmax(1)
        rewards = episode_rewards(stop, correct[idx], maxprob[idx], used, lam, cfg.dense)
        adv, ret = gae(rewards, values.numpy(), stop, cfg.gae_lambda)
        # the forced stop at the last exit is no decision: it carries value, not policy, gradient
        decide = (np.arange(E)[None] <= stop[:, None]) & (np.arange(E)[None] < E - 1)
        valid = np.arange(E)[None] <= stop[:, None]
        old_logp = torch.distributions.Bernoulli(logits=logits).log_prob(torch.from_numpy(acts.astype(np.float32)))
        t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in
             dict(adv=adv, ret=ret, decide=decide, valid=valid, acts=acts).items()}
        norm_adv = (t["adv"] - t["adv"][t["decide"] > 0].mean()) / (t["adv"][t["decide"] > 0].std() + 1e-8)
        for _ in range(cfg.epochs):
            for mb in torch.randperm(cfg.episodes).split(cfg.minibatch):
                lg, v = policy.unroll(xs[mb])
                dist = torch.distributions.Bernoulli(logits=lg)
                ratio = torch.exp(dist.log_prob(t["acts"][mb]) - old_logp[mb])
                a = norm_adv[mb]
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a)
                d, vm = t["decide"][mb], t["valid"][mb]
                loss = ((pg - cfg.entropy * dist.entropy()) * d).sum() / d.sum().clamp(min=1) \
                    + cfg.value_coef * (((v - t["ret"][mb]) ** 2) * vm).sum() / vm.sum()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
                opt.step()
        # the true (unshaped) return: what the policy is for
        true_reward = correct[idx, stop] - lam * used[stop]
        log.append({"update": update + 1, "mean_reward": float(true_reward.mean()),
                    "mean_exit": float(stop.mean()), "accuracy": float(correct[idx, stop].mean()),
                    "seconds": round(time.time() - start, 2)})
    return policy, log


class PolicyMethod:
    """The trained policy as a `decide` method (numpy step: exactly what the device runs)."""
    cost = "progressive"

    def __init__(self, arrays: PolicyArrays, lam: float):
        self.arrays, self.lam = arrays, lam

    def init(self, n):
        return self.arrays.zero_state(n)

    def decide(self, b: Boundary, state):
        h, c = state
        x = policy_state(b.proba, b.k, b.conf, b.agree, b.used, self.lam, self.arrays.use_predictor)
        logit, _, h, c = self.arrays.step(x, h, c)
        return logit > 0, (h, c)


def export_policy_onnx(policy: LSTMPolicy, path, opset: int = 17) -> None:
    """One step per call: inputs state (N, S), h, c (N, H); outputs stop_logit, value, h_out, c_out."""
    from edge_model.export import quiet_export
    S, H = policy.cell.input_size, policy.cell.hidden_size
    args = (torch.zeros(2, S), torch.zeros(2, H), torch.zeros(2, H))
    batch = torch.export.Dim("batch", min=1)
    with quiet_export():
        torch.onnx.export(policy.eval(), args, str(path), dynamo=True, external_data=False, opset_version=opset,
                          input_names=["state", "h", "c"], output_names=["stop_logit", "value", "h_out", "c_out"],
                          dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), verbose=False)
