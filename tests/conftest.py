"""Shared helpers: an in-process `run_cli` (HTTPie's `http()` idea) and one tiny trained checkpoint."""
import contextlib
import io
import shutil
import textwrap

import pytest
import torch

from edge_model import cli
from edge_runtime.tools import cli as infer_cli
from edge_runtime.core.errors import Exit

# Two cores shared with long background trainings: one intra-op thread keeps every test polite.
torch.set_num_threads(1)


def import_blocker(*packages: str) -> str:
    """Python source that, run first in a fresh interpreter, makes importing `packages` (and their
    submodules) fail, as on a device where they are not installed (Polygraphy's test_dependencies)."""
    return textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {packages!r}:
                    raise ImportError(f"{{name.split('.')[0]}} is blocked on the device side (import of {{name}})")
                return None

        sys.meta_path.insert(0, Block())
    """)


def run_main(main, *args) -> tuple:
    """(stdout, stderr, exit code) of a CLI's `main(ARGS)`, run in this process (HTTPie's `http()`)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:   # argparse: --help and usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return out.getvalue(), err.getvalue(), code


def run_cli(*args) -> tuple:
    """`edge-model ARGS...` in this process."""
    return run_main(cli.main, *args)


def run_infer(*args) -> tuple:
    """`edge-infer ARGS...` in this process."""
    return run_main(infer_cli.main, *args)


def assert_one_line_error(result, code, prog: str, *words):
    """A user error: the named exit code, exactly one stderr line starting with `prog:`, no traceback."""
    out, err, exit_code = result
    assert exit_code == code, f"exit {exit_code!r}, wanted {code!r}; stderr: {err!r}"
    assert "Traceback" not in err + out
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith(f"{prog}: ")
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"


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


@pytest.fixture(scope="session")
def exported(digits_ckpt, tmp_path_factory):
    """(checkpoint, engine dir): a tiny controller fitted on a copy of the digits checkpoint, then exported."""
    root = tmp_path_factory.mktemp("engines")
    ckpt = root / "ckpt"
    shutil.copytree(digits_ckpt, ckpt)
    for args in (("cache-exits", "--checkpoint", ckpt),
                 ("fit-controller", "--checkpoint", ckpt, "--updates", "3", "--episodes", "128", "--minibatch",
                  "128", "--hidden", "8", "--no-progress"),
                 ("export", "--checkpoint", ckpt, "--out", root / "engines" / "digits", "--no-progress")):
        out, err, code = run_cli(*args)
        assert code == Exit.OK, (args[0], err)
    assert "edge-infer check --engine-dir" in out
    return ckpt, root / "engines" / "digits"


@pytest.fixture
def engine_copy(exported, tmp_path):
    """A private copy of the engine directory, free to damage."""
    dst = tmp_path / "digits"
    shutil.copytree(exported[1], dst)
    return dst
