"""The device side under Python 3.8 (JetPack 5.1), against the same calls under this venv's Python.

The engine directory is the session's `exported` digits engine (made by this venv, with torch). Everything
else runs in a subprocess of .venv38/bin/python (`make setup38`: pyenv's 3.8 with deploy/requirements-jetpack5.txt
only, no torch, no scikit-learn): every edge_runtime module imports, Runtime.open + infer_batch, `edge-infer
check` and a stream run. Labels and depths must equal this venv's.

The digits images come from this side: the `digits` dataset is scikit-learn's, and scikit-learn is no device
dependency, so .venv38 leaves it out (installing it there would also hide an accidental scipy/sklearn import).
The 3.8 side gets them as an .npy file (infer_batch) and as a directory of PNGs (the stream run; an image
directory source, which is what a device reads), and this side checks that the PNG directory streams exactly
as dataset://digits/test does.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PY38 = ROOT / ".venv38" / "bin" / "python"
FRAMES = 50
CLI = ("-m", "edge_runtime.tools.cli")

pytestmark = pytest.mark.skipif(not PY38.exists(), reason=f"{PY38} missing: `make setup38` makes it from "
                                "pyenv's Python 3.8.18 (install that, or pass PY38=...)")


def run_py(python, args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def py38(args, cwd) -> subprocess.CompletedProcess:
    """`.venv38/bin/python ARGS` outside the repository: edge_runtime comes from the venv's editable install."""
    return run_py(PY38, args, cwd)


def failed(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-6000:]}"


@pytest.fixture(scope="module")
def digits_test():
    from edge_runtime.io.datasets import image_split
    x, y, _ = image_split("digits", "test")
    return x, y


def test_venv38_is_python38_without_torch(tmp_path):
    r = py38(["-c", "import sys, importlib.util as u; print(sys.version_info[:2] == (3, 8), u.find_spec('torch') "
                    "is None, u.find_spec('sklearn') is None)"], tmp_path)
    assert r.returncode == 0, failed(r)
    assert r.stdout.split() == ["True", "True", "True"], r.stdout


IMPORT_ALL = textwrap.dedent("""
    import importlib, json, pkgutil, traceback
    import edge_runtime
    bad = {}
    for m in sorted(m.name for m in pkgutil.walk_packages(edge_runtime.__path__, "edge_runtime.")):
        try:
            importlib.import_module(m)
        except BaseException:
            bad[m] = traceback.format_exc().strip().splitlines()[-3:]
    print(json.dumps(bad))
""")


def test_every_edge_runtime_module_imports_under_py38(tmp_path):
    r = py38(["-c", IMPORT_ALL], tmp_path)
    assert r.returncode == 0, failed(r)
    bad = json.loads(r.stdout.splitlines()[-1])
    assert not bad, "modules that do not import on Python 3.8:\n" + "\n".join(
        f"{m}:\n    " + "\n    ".join(tb) for m, tb in bad.items())


INFER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edge_runtime.runtime import Runtime
    images = np.load(sys.argv[2])
    with Runtime.open(sys.argv[1]) as rt:
        rs = rt.infer_batch(list(images))
    print(json.dumps({"label": [r.label for r in rs], "depth": [r.depth for r in rs],
                      "score": [r.score for r in rs]}))
""")


def test_runtime_infer_batch_matches(exported, digits_test, tmp_path):
    from edge_runtime.runtime import Runtime
    engine_dir = exported[1]
    x, _ = digits_test
    np.save(tmp_path / "digits_test.npy", x)
    r = py38(["-c", INFER, engine_dir, tmp_path / "digits_test.npy"], tmp_path)
    assert r.returncode == 0, failed(r)
    got = json.loads(r.stdout.splitlines()[-1])
    with Runtime.open(engine_dir) as rt:
        want = rt.infer_batch(list(x))
    assert len(got["label"]) == len(x)
    assert got["label"] == [w.label for w in want]
    assert got["depth"] == [w.depth for w in want]
    np.testing.assert_allclose(got["score"], [w.score for w in want], atol=1e-4)


def test_check_passes_under_py38(exported, tmp_path):
    r = py38([*CLI, "check", "--engine-dir", exported[1], "--json", tmp_path / "check.json"], tmp_path)
    assert r.returncode == 0, failed(r)
    assert "PASS" in r.stdout
    assert json.loads((tmp_path / "check.json").read_text())["passed"] is True


def frames(path: Path) -> list:
    return [(rec["label"], rec["depth"]) for rec in map(json.loads, path.read_text().splitlines())]


def test_stream_run_matches(exported, digits_test, tmp_path):
    import cv2
    engine_dir = exported[1]
    x, _ = digits_test
    pngs = tmp_path / "digits_test"
    pngs.mkdir()
    for i, img in enumerate(x[:FRAMES]):     # grey uint8, read back as the same (8, 8) array
        assert cv2.imwrite(str(pngs / f"{i:04d}.png"), img)
    opts = ["--engine-dir", engine_dir, "--headless", "--quiet", "--max-frames", FRAMES]
    r38 = py38([*CLI, "run", pngs, *opts, "--json", tmp_path / "py38.jsonl"], tmp_path)
    assert r38.returncode == 0, failed(r38)
    # this venv: the same directory, and the dataset split it was written from
    here = run_py(sys.executable, [*CLI, "run", pngs, *opts, "--json", tmp_path / "here.jsonl"], tmp_path)
    assert here.returncode == 0, failed(here)
    ds = run_py(sys.executable, [*CLI, "run", "dataset://digits/test", *opts, "--json", tmp_path / "dataset.jsonl"],
                tmp_path)
    assert ds.returncode == 0, failed(ds)
    got, want = frames(tmp_path / "py38.jsonl"), frames(tmp_path / "here.jsonl")
    assert len(got) == FRAMES
    assert got == want
    assert frames(tmp_path / "dataset.jsonl") == want
