"""Reward and shaping arithmetic, GAE, PPO learning, and the policy's numpy/ONNX step against torch."""
import numpy as np
import pytest
import torch

from edge_model.controller.methods import outcome, run
from edge_model.controller.policy import (LSTMPolicy, PolicyMethod, PPOConfig, episode_rewards, export_policy_onnx,
                                          gae, table_states, train_policy)
from edge_model.controller.table import ExitTable
from edge_runtime.core.features import confidence
from edge_runtime.core.policy import PolicyArrays, policy_state, state_size

USED = np.array([0.2, 0.5, 1.0])
CORRECT = np.array([[0.0, 1.0, 1.0]])
MAXPROB = np.array([[0.4, 0.8, 0.9]])


def test_dense_rewards_by_hand():
    r = episode_rewards(np.array([1]), CORRECT, MAXPROB, USED, np.array([0.5]), dense=True)
    # step 0 continues: -0.5 * 0.2 + (0.8 - 0.4); step 1 stops: -0.5 * 0.3 - 0.8 + 1; nothing after
    np.testing.assert_allclose(r, [[0.3, 0.05, 0.0]], atol=1e-12)


def test_shaping_telescopes_to_the_true_return():
    rng = np.random.default_rng(0)
    B, E = 200, 5
    correct, maxprob = rng.integers(0, 2, (B, E)).astype(float), rng.random((B, E))
    used, lam, stop = np.cumsum(rng.random(E)) / 3, rng.random(B), rng.integers(0, E, B)
    dense = episode_rewards(stop, correct, maxprob, used, lam, dense=True).sum(1)
    terminal = episode_rewards(stop, correct, maxprob, used, lam, dense=False)
    truth = correct[np.arange(B), stop] - lam * used[stop]
    np.testing.assert_allclose(terminal.sum(1), truth, atol=1e-12)
    np.testing.assert_allclose(dense, truth - maxprob[:, 0], atol=1e-12)   # minus Phi(s0): policy-invariant
    assert np.all(terminal[np.arange(E)[None] != stop[:, None]] == 0)


def test_terminal_reward_by_hand():
    r = episode_rewards(np.array([1]), CORRECT, MAXPROB, USED, np.array([0.5]), dense=False)
    np.testing.assert_allclose(r, [[0.0, 0.75, 0.0]])


def test_gae_is_reward_to_go_with_zero_values_and_lambda_one():
    rewards = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 0.0]])
    adv, ret = gae(rewards, np.zeros((2, 3)), np.array([2, 1]), 1.0)
    np.testing.assert_allclose(adv, [[6.0, 5.0, 3.0], [3.0, 2.0, 0.0]])
    np.testing.assert_allclose(ret, adv)


def synthetic_table(n=2000, seed=0) -> ExitTable:
    """Two exits: exit 0 is right exactly on 'easy' inputs, which its confidence reveals; exit 1 always."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    easy = rng.random(n) < 0.6
    logits = np.zeros((n, 2, 2), np.float32)
    logits[np.arange(n), 0, np.where(easy, y, 1 - y)] = np.where(easy, 4.0, 0.3)
    logits[np.arange(n), 1, y] = 4.0
    return ExitTable(logits, y, np.array([1, 2]), np.array([1.0, 4.0]), 0.0, np.zeros((n, 4), np.float32),
                     np.zeros((n, 3), np.float32))


def test_ppo_raises_the_mean_reward():
    torch.set_num_threads(1)
    table = synthetic_table()
    cfg = PPOConfig(hidden=16, updates=40, episodes=512, minibatch=512, lam_min=0.2, lam_max=0.6, seed=0)
    policy, log = train_policy(table, None, cfg, progress=False)
    first = np.mean([e["mean_reward"] for e in log[:5]])
    last = np.mean([e["mean_reward"] for e in log[-5:]])
    assert last > first + 0.05
    # and it learned the task: easy inputs stop at exit 0, hard ones go on
    stop_at = run(PolicyMethod(policy.arrays(True), 0.4), table)
    easy = table.correct[:, 0]
    assert (stop_at[easy] == 0).mean() > 0.9 and (stop_at[~easy] == 1).mean() > 0.9
    assert outcome(table, stop_at, "progressive")["accuracy"] > 0.95


def test_numpy_and_onnx_steps_equal_torch(tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    E, H, N = 4, 32, 64
    policy = LSTMPolicy(state_size(E), H).eval()
    arrays = policy.arrays(True)
    export_policy_onnx(policy, tmp_path / "policy.onnx")
    import onnx
    assert {o.domain: o.version for o in onnx.load(tmp_path / "policy.onnx").opset_import}[""] == 17
    sess = ort.InferenceSession(str(tmp_path / "policy.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    th = tc = torch.zeros(N, H)
    nh, nc = arrays.zero_state(N)
    oh, oc = arrays.zero_state(N)
    for k in range(E):
        proba = rng.dirichlet(np.ones(E), N).astype(np.float32)
        x = policy_state(proba, k, rng.random((N, 3)), rng.random((N, 2)), 0.25 * (k + 1), rng.random(N) + 0.01)
        with torch.no_grad():
            tl, tv, th, tc = policy(torch.from_numpy(x), th, tc)
        nl, nv, nh, nc = arrays.step(x, nh, nc)
        ol, ov, oh, oc = sess.run(None, {"state": x, "h": oh, "c": oc})
        for got in ((nl, nv, nh, nc), (ol, ov, oh, oc)):
            for a, b in zip(got, (tl, tv, th, tc)):
                np.testing.assert_allclose(a, b.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_predictor", [True, False])
def test_compiled_boundary_equals_policy_state_and_step(use_predictor):
    """The device's one-call boundary (state columns, agreement, LSTM step, stop) against the numpy reference,
    over every boundary of a batch of rows with random predictions."""
    torch.manual_seed(1)
    E, H, N = 5, 16, 40
    arrays = LSTMPolicy(state_size(E), H).eval().arrays(use_predictor)
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(E), N).astype(np.float32)
    lam = (rng.random(N) + 0.01).astype(np.float32)
    preds = rng.integers(0, 3, (N, E))
    used = (np.cumsum(rng.random(E)) / E).astype(np.float32)
    st, _ = arrays.rollout(proba, lam)
    rh, rc = arrays.zero_state(N)
    for k in range(E):
        # real-valued logits whose argmax is preds[:, k]; the kernel takes their confidence itself
        logits = (rng.normal(size=(N, 4)) * 0.3).astype(np.float32)
        logits[np.arange(N), preds[:, k]] = logits.max(1) + (rng.random(N) * 3 + 0.05).astype(np.float32)
        conf = confidence(logits)
        prev = preds[:, :k]
        agree = np.zeros((N, 2), np.float32)
        if k:
            agree[:, 0], agree[:, 1] = (prev == preds[:, k:k + 1]).mean(1), prev[:, -1] == preds[:, k]
        ref_x = policy_state(proba, k, conf, agree, used[k], lam, use_predictor)
        logit, _, rh, rc = arrays.step(ref_x, rh, rc)
        got = np.zeros_like(preds)
        got[:, :k] = preds[:, :k]
        stop = arrays.boundary(k, st, got, logits, used)
        assert np.array_equal(got[:, k], preds[:, k])
        S = ref_x.shape[1]
        np.testing.assert_allclose(st[:, :S], ref_x, atol=1e-6)
        np.testing.assert_allclose(st[:, S:S + H], rh, atol=1e-5)
        np.testing.assert_allclose(st[:, S + H:S + 2 * H], rc, atol=1e-5)
        decided = np.abs(logit) > 1e-4            # a logit within rounding of 0 may go either way
        assert np.array_equal(stop[decided], (logit > 0)[decided]) and decided.mean() > 0.9


def test_policy_arrays_round_trip(tmp_path):
    arrays = LSTMPolicy(state_size(3), 8).arrays(False)
    arrays.save(tmp_path / "p.npz")
    back = PolicyArrays.load(tmp_path / "p.npz")
    assert back.use_predictor is False
    np.testing.assert_array_equal(back.w_ih, arrays.w_ih)


def test_state_without_predictor_zeroes_its_columns():
    table = synthetic_table(50)
    proba = np.full((50, 2), 0.5, np.float32)
    xs = table_states(table, proba, np.full(50, 0.1, np.float32), use_predictor=False)
    assert xs.shape == (50, 2, state_size(2)) and np.all(xs[:, :, :3] == 0)
    np.testing.assert_allclose(xs[:, 1, -1], np.log(0.1), rtol=1e-6)


def test_corrupt_policy_file_is_one_line(tmp_path):
    from edge_runtime.core.errors import EdgeError, Exit
    (tmp_path / "p.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgeError) as err:
        PolicyArrays.load(tmp_path / "p.npz")
    assert err.value.exit == Exit.CORRUPT and "\n" not in str(err.value)
