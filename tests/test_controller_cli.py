"""fit-controller and eval-controller end to end on the tiny digits checkpoint."""
import json

from conftest import run_cli
from edge_runtime.core.errors import Exit


def test_fit_and_eval_controller(digits_copy):
    out, err, code = run_cli("cache-exits", "--checkpoint", digits_copy)
    assert code == Exit.OK, err
    out, err, code = run_cli("fit-controller", "--checkpoint", digits_copy, "--updates", "6", "--episodes", "256",
                             "--minibatch", "256", "--hidden", "16", "--no-progress")
    assert code == Exit.OK, err
    ctrl = digits_copy / "controller"
    for name in ("predictor.onnx", "predictor.txt", "policy.onnx", "policy.npz", "policy_terminal.npz",
                 "policy_nopredictor.npz", "controller.json"):
        assert (ctrl / name).is_file(), name
    fitted = json.loads((ctrl / "controller.json").read_text())
    assert fitted["predictor"]["onnx_max_abs_diff"] <= 1e-5
    assert max(fitted["policies"]["policy"]["parity_max_abs"].values()) <= 1e-5
    assert len(fitted["policies"]["policy"]["log"]) == 6

    out, err, code = run_cli("eval-controller", "--checkpoint", digits_copy, "--compare", digits_copy)
    assert code == Exit.OK, err
    report = json.loads((digits_copy / "report" / "controller.json").read_text())
    assert report["main"] == "policy"
    for name in ("fixed", "entropy", "maxprob", "patience", "predictor", "oneshot", "oracle", "policy",
                 "policy_terminal", "policy_nopredictor"):
        assert name in report["families"], name
    assert "random" in report["headline"] and "## Ablations" in out
    for png in ("accuracy_vs_flops.png", "depth_histogram.png", "ppo_reward.png"):
        assert (digits_copy / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_controller_without_fit_is_one_line(digits_copy):
    _, err, code = run_cli("eval-controller", "--checkpoint", digits_copy)
    assert code == Exit.NOT_FOUND and err.count("\n") == 1 and "fit-controller" in err


def test_fit_controller_without_cache_is_one_line(digits_copy):
    _, err, code = run_cli("fit-controller", "--checkpoint", digits_copy, "--updates", "1", "--no-progress")
    assert code == Exit.NOT_FOUND and err.count("\n") == 1 and "cache-exits" in err
