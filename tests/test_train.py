"""Training writes a checkpoint that loads to the same weights; eval reports every exit; DDP agrees."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from edge_model import train as train_mod
from edge_model.checkpoint import load_checkpoint, param_digest
from edge_model.evaluate import evaluate
from edge_model.presets import create_model
from edge_model.train import (config_from, multi_exit_loss, pick_device, shallow_weights,
                              to_device, train)
from edge_runtime.core.errors import EdgeError, Exit


def test_checkpoint_loads_with_its_digest(digits_ckpt):
    model, config = load_checkpoint(digits_ckpt)
    assert not model.training
    assert config["preset"] == "digits-vit-tiny" and config["arch"] == "vit"
    assert re.fullmatch(r"[0-9a-f]{64}", config["param_sha256"])
    assert param_digest(model) == config["param_sha256"]
    log = json.loads((digits_ckpt / "train_log.json").read_text())
    assert log["world_size"] == 1 and log["param_sha256"] == config["param_sha256"]
    assert len(log["epochs"]) == config["train"]["epochs"] and all(len(e["val_exit_accuracy"]) == 4 for e in log["epochs"])
    # the digest sees every weight: one nudged value changes it
    with torch.no_grad():
        model.heads[0].head.bias[0] += 1e-3
    assert param_digest(model) != config["param_sha256"]


def test_shallow_exit_weights():
    assert shallow_weights((1, 2, 4, 8), "uniform") == [1 / 3] * 3
    assert shallow_weights((1, 2, 4, 8), "depth") == [1 / 7, 2 / 7, 4 / 7]
    # the loss with explicit weights: CE(final) + sum_k w_k * shallow term k, each term computed by hand
    torch.manual_seed(0)
    outs, y = [torch.randn(5, 3) for _ in range(3)], torch.tensor([0, 1, 2, 1, 0])
    cfg = config_from("digits-vit-tiny", distill_alpha=0.0)
    ce = [torch.nn.functional.cross_entropy(o, y) for o in outs]
    got = multi_exit_loss(outs, y, cfg, [0.25, 0.75])
    assert torch.allclose(got, ce[2] + 0.25 * ce[0] + 0.75 * ce[1])
    assert torch.allclose(multi_exit_loss(outs, y, cfg), ce[2] + (ce[0] + ce[1]) / 2)


def test_eval_cli_reports_every_exit(digits_ckpt, tmp_path):
    out, err, code = run_cli("eval", "--checkpoint", digits_ckpt, "--report", tmp_path)
    assert code == Exit.OK, err
    r = json.loads((tmp_path / "eval.json").read_text())
    assert r["exits"] == [1, 2, 3, 4] and r["preset"] == "digits-vit-tiny"
    assert r["samples"] == {"val": 270, "test": 270}
    assert len(r["flops"]) == 4 and r["flops"] == sorted(r["flops"])
    for split in ("val", "test"):
        accs = r["accuracy"][split]
        assert len(accs) == 4 and all(0.0 <= a <= 1.0 for a in accs)
        assert accs[-1] > 0.4, f"a trained model should beat 10% chance by far: {accs}"
    md = (tmp_path / "eval.md").read_text()
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(line.split("|")[1]) for line in rows] == [1, 2, 3, 4]
    assert md in out
    assert not (digits_ckpt / "eval.json").exists()


def test_final_exit_only_training(tmp_path):
    ckpt = train(config_from("digits-vit-tiny", out=str(tmp_path / "final"), seed=0, epochs=1,
                             exit_loss="final", threads=1), progress=False)
    model, config = load_checkpoint(ckpt)
    assert config["train"]["exit_loss"] == "final" and param_digest(model) == config["param_sha256"]
    torch.manual_seed(0)
    init = create_model("digits-vit-tiny", pretrained=False)
    # only the last exit is trained: the shallow heads keep their initial weights, the trunk and last head move
    for k in range(len(model.exits) - 1):
        for a, b in zip(model.heads[k].parameters(), init.heads[k].parameters()):
            assert torch.equal(a, b)
    assert not torch.equal(model.heads[-1].head.weight, init.heads[-1].head.weight)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, init.blocks[0].attn.qkv.weight)


def test_training_is_reproducible(tmp_path):
    digests = [load_checkpoint(train(config_from("digits-vit-tiny", out=str(tmp_path / f"r{i}"), seed=seed,
                                                 epochs=0.5, threads=1), progress=False))[1]["param_sha256"]
               for i, seed in enumerate([0, 0, 1])]
    assert digests[0] == digests[1] != digests[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_agree(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "edge_model.cli", "train", "--preset", "digits-vit-tiny", "--epochs", "2", "--threads", "1",
           "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = dict(re.findall(r"rank (\d) param sha256 ([0-9a-f]{64})", proc.stdout))
    assert sorted(found) == ["0", "1"], proc.stdout
    assert found["0"] == found["1"]
    configs = list(tmp_path.rglob("config.json"))
    assert configs == [out / "config.json"]
    config = json.loads(configs[0].read_text())
    assert config["param_sha256"] == found["0"]
    model, _ = load_checkpoint(out)
    assert param_digest(model) == found["0"]
    log = json.loads((out / "train_log.json").read_text())
    assert log["world_size"] == 2 and len(log["epochs"]) == 2
    # each rank saw half the training split (the sampler drops the odd one), in whole batches
    per_epoch = (1257 // 2) // config["train"]["batch_size"]
    assert config["train"]["epochs"] == 2.0
    assert [e["step"] for e in log["epochs"]] == [per_epoch, 2 * per_epoch]
    assert np.isfinite([e["loss"] for e in log["epochs"]]).all()


def test_pick_device():
    # (requested, CUDA available, LOCAL_RANK or None alone, GPUs) -> (torch device, DDP backend)
    assert pick_device("auto", False, None, 0) == ("cpu", "gloo")
    assert pick_device("auto", False, 1, 0) == ("cpu", "gloo")            # torchrun on a CPU machine
    assert pick_device("auto", True, None, 1) == ("cuda", "nccl")
    assert pick_device("auto", True, 1, 2) == ("cuda:1", "nccl")          # torchrun: one GPU per process
    assert pick_device("cuda", True, 0, 2) == ("cuda:0", "nccl")
    assert pick_device("cpu", True, 1, 2) == ("cpu", "gloo")              # forced CPU beside GPUs: gloo
    for args, words in ((("cuda", False, None, 0), ("device 'cuda'", "no CUDA")),
                        (("cuda", False, 1, 0), ("device 'cuda'", "no CUDA")),
                        (("auto", True, 2, 2), ("LOCAL_RANK 2", "2 CUDA GPU")),
                        (("gpu", True, None, 1), ("device 'gpu'", "'auto', 'cpu' or 'cuda'"))):
        with pytest.raises(EdgeError) as err:
            pick_device(*args)
        assert err.value.exit == Exit.BAD_INPUT and "\n" not in str(err.value)
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(EdgeError, match="device 'gpu'"):
        config_from("digits-vit-tiny", device="gpu")
    assert config_from("digits-vit-tiny").device == "auto"


def test_train_cli_device_errors_are_one_line():
    assert_one_line_error(run_cli("train", "--preset", "digits-vit-tiny", "--device", "gpu"),
                          Exit.BAD_INPUT, "edge-model", "device 'gpu'")
    if not torch.cuda.is_available():   # on a GPU machine --device cuda would train: nothing to check
        assert_one_line_error(run_cli("train", "--preset", "digits-vit-tiny", "--device", "cuda"),
                              Exit.BAD_INPUT, "edge-model", "device 'cuda'", "--device cpu")


def test_batches_stay_put_on_the_cpu():
    x = torch.arange(6.0)
    assert to_device(x, "cpu") is x and to_device(None, "cpu") is None and to_device(None, "cuda") is None


def test_training_device_and_cpu_checkpoint(tmp_path, monkeypatch):
    """auto: the GPU when there is one. Whatever trained, the checkpoint gets CPU tensors, the loss is
    finite, and the per-epoch val accuracy matches evaluate's (collect_exits) on the saved weights."""
    seen = []
    real_save = train_mod.save_checkpoint

    def save(out, model, *args):
        seen.extend({t.device.type for t in model.state_dict().values()})
        return real_save(out, model, *args)

    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    ckpt = train(config_from("digits-vit-tiny", out=str(tmp_path / "d"), seed=0, epochs=2, threads=1),
                 progress=False)
    assert set(seen) == {"cpu"}
    log = json.loads((ckpt / "train_log.json").read_text())
    want = pick_device("auto", torch.cuda.is_available(), None, torch.cuda.device_count())[0]
    assert log["device"] == want and len(log["epochs"]) == 2
    assert np.isfinite([e["loss"] for e in log["epochs"]]).all()
    ref = evaluate(ckpt, splits=("val",))["accuracy"]["val"]    # on the CPU, through collect_exits
    if want == "cpu":
        assert log["epochs"][-1]["val_exit_accuracy"] == ref
    else:   # GPU kernels round differently: a sample or two may flip
        assert np.allclose(log["epochs"][-1]["val_exit_accuracy"], ref, atol=0.01)
