"""Shared helpers: an in-process `run_cli` (HTTPie's `http()` idea) and one tiny trained checkpoint."""
import contextlib
import io
import shutil

import pytest
import torch

from edge_model import cli

# Two cores shared with long background trainings: one intra-op thread keeps every test polite.
torch.set_num_threads(1)


def run_cli(*args) -> tuple:
    """(stdout, stderr, exit code) of `edge-model ARGS...`, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:   # argparse: --help and usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return out.getvalue(), err.getvalue(), code


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory):
    """`digits-vit-tiny` trained once (seconds) for the whole session. Treat it as read-only."""
    from edge_model.train import config_from, train
    out = tmp_path_factory.mktemp("digits") / "ckpt"
    return train(config_from("digits-vit-tiny", out=str(out), seed=0, threads=1), progress=False)


@pytest.fixture
def digits_copy(digits_ckpt, tmp_path):
    """A private copy of the trained checkpoint, free to damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(digits_ckpt, dst)
    return dst
