"""The device side on JetPack 5.1's Python 3.8, checked without running it.

1. vermin over edge_runtime/: no construct newer than Python 3.8 (strict flags, see VERMIN_ARGS).
2. An AST scan for the 3.9+ methods vermin cannot see on an object of unknown type (`p.is_relative_to`).
3. deploy/requirements-jetpack5.txt resolves, dependencies included, to wheels that an aarch64 CPython 3.8
   installs (what the Jetson downloads), without downloading them (pip's --dry-run --report).
Each check also proves it can fail, on a planted violation.
"""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging import tags
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "edge_runtime"
REQS = ROOT / "deploy" / "requirements-jetpack5.txt"
PY38 = ROOT / ".venv38" / "bin" / "python"
PIP_AS_JETSON = Path(__file__).with_name("pip_as_jetson.py")

# --target=3.8-: 3.8 or older must do. --violations: list only what breaks that target (and exit 1).
# --eval-annotations: annotations ARE evaluated at definition time on 3.8 (no PEP 563 by default), so
# `def f(x: list[int])` or `-> int | None` fails at import there. union-types: `X | Y` outside annotations
# too. --pessimistic: a file this interpreter cannot parse counts as a violation, not as nothing found.
# --no-config-file: no vermin.ini/setup.cfg can loosen the check. -vvv: line numbers in the report.
VERMIN_ARGS = ["--target=3.8-", "--no-tips", "--violations", "--eval-annotations", "--feature", "union-types",
               "--pessimistic", "--no-config-file", "--no-make-paths-absolute", "-vvv"]


def vermin(*paths) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("vermin")
    exe = str(exe) if exe.exists() else shutil.which("vermin")
    assert exe, "vermin is not installed in this venv: make setup (it is in the `dev` extra)"
    return subprocess.run([exe, *VERMIN_ARGS, *map(str, paths)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_edge_runtime_is_python38_per_vermin():
    r = vermin("edge_runtime")
    assert r.returncode == 0, f"vermin: edge_runtime needs more than Python 3.8:\n{r.stdout}{r.stderr}"
    assert "Target versions not met" not in r.stdout, r.stdout


PLANTED_39 = '''\
import functools
a = "x".removeprefix("y")                 # 3.9
b = {"a": 1} | {"b": 2}                   # 3.9
@functools.cache                          # 3.9
def f(x: list[int]) -> int | None:        # 3.9, 3.10 (annotations are evaluated on 3.8)
    return None
match a:                                  # 3.10
    case "y":
        pass
c = list(zip([1], [2], strict=True))      # 3.10
'''
PLANTED_38 = '''\
from typing import List, Optional
def f(x: List[int], /, *, y: Optional[int] = None) -> Optional[int]:   # positional-only: 3.8
    if (n := len(x)) > 1:                                                 # walrus: 3.8
        return n
    print(f"{y=}")                                                        # self-documenting f-string: 3.8
    return {**{"a": 1}, **{"b": 2}} and None
'''


def test_vermin_catches_planted_39_constructs(tmp_path):
    bad = tmp_path / "planted.py"
    bad.write_text(PLANTED_39)
    r = vermin(bad)
    assert r.returncode != 0, r.stdout
    for what in ("str.removeprefix", "dict union", "functools.cache", "builtin generic type annotation (list",
                 "union types as `X | Y`", "pattern matching", "zip(strict)"):
        assert what in r.stdout, f"vermin missed {what!r}:\n{r.stdout}"
    good = tmp_path / "fine38.py"
    good.write_text(PLANTED_38)
    r = vermin(good)
    assert r.returncode == 0, f"a Python 3.8 file is not flagged:\n{r.stdout}{r.stderr}"


# Methods added in 3.9+ that vermin reports only where it knows the receiver's type (a literal, an
# import): on `path.resolve().is_relative_to(root)` or `name.removeprefix(p)` it says nothing.
# A same-named method of our own would be flagged too: rename it, or list it in OWN_METHODS.
NEWER_METHODS = {
    "is_relative_to": "pathlib.PurePath, 3.9",
    "with_stem": "pathlib.PurePath, 3.9",
    "readlink": "pathlib.Path, 3.9",
    "hardlink_to": "pathlib.Path, 3.10",
    "removeprefix": "str/bytes, 3.9",
    "removesuffix": "str/bytes, 3.9",
    "bit_count": "int, 3.10",
    "randbytes": "random.Random, 3.9",
}
OWN_METHODS = set()


def newer_method_uses(root: Path) -> list:
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in NEWER_METHODS and node.attr not in OWN_METHODS:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: .{node.attr} "
                             f"({NEWER_METHODS[node.attr]})")
    return found


def test_edge_runtime_uses_no_39_methods_vermin_cannot_see():
    found = newer_method_uses(RUNTIME)
    assert not found, "methods newer than Python 3.8:\n" + "\n".join(found)


def test_method_scan_catches_planted(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def inside(path, root, name):\n"
                              "    return path.resolve().is_relative_to(root), name.removeprefix('x')\n")
    found = newer_method_uses(pkg)
    assert [f.split(": ")[1].split()[0] for f in found] == [".is_relative_to", ".removeprefix"], found
    assert found[0].startswith("pkg/m.py:2: ")


# --- the device pins resolve to wheels the Jetson installs

# JetPack 5.1 is Ubuntu 20.04: glibc 2.31, so pip there takes manylinux_2_17 ... manylinux_2_31 wheels
# (pip expands only the legacy manylinux2014 name to older ones: every tag is listed).
JETSON_PLATFORMS = [f"manylinux_2_{m}_aarch64" for m in range(31, 16, -1)] + ["manylinux2014_aarch64"]
JETSON_TAGS = set(tags.cpython_tags((3, 8), ["cp38"], JETSON_PLATFORMS)) | \
    set(tags.compatible_tags((3, 8), "cp38", JETSON_PLATFORMS))
NETWORK_TROUBLE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                   "Name or service not known", "ConnectTimeoutError", "ReadTimeoutError", "ProxyError", "SSLError",
                   "Could not fetch URL", "connection broken by", "Network is unreachable", "Connection refused")


def registry_env() -> dict:
    """pip's environment with the registry only: no pip config files, hence none of this machine's local
    wheel folders or file:// extra indexes (x86_64 cp311 copies the board never sees); the cert and timeout
    set in the environment stay."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX", "PIP_TARGET")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def pip_jetson(tmp: Path, args: list) -> subprocess.CompletedProcess:
    """pip under Python 3.8 (markers: 3.8 on aarch64), resolving for CPython 3.8 on manylinux aarch64."""
    cmd = [str(PY38), str(PIP_AS_JETSON), "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
           *[a for p in JETSON_PLATFORMS for a in ("--platform", p)], "--python-version", "3.8",
           "--implementation", "cp", "--abi", "cp38", "--target", str(tmp / "target"), "--no-input",
           "--disable-pip-version-check", "--retries", "1", "--timeout", "30", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=registry_env(), timeout=300)
    if r.returncode and any(s in r.stdout + r.stderr for s in NETWORK_TROUBLE):
        pytest.skip(f"the package registry is not reachable from here (not a pin's fault):\n{r.stderr[-2000:]}")
    return r


def pins(path: Path) -> list:
    lines = [ln.split(" #")[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def resolve(req_file: Path, tmp: Path) -> dict:
    """{"installs": [(name, version, wheel)], "unresolved": [pin, ...], "not_jetson": [...], "output": str}:
    the whole file resolved together, dependencies included; on failure each pin alone (--no-deps), to name
    the ones without a wheel for the board."""
    report = tmp / "report.json"
    r = pip_jetson(tmp, ["--report", str(report), "-r", str(req_file)])
    out = {"installs": [], "unresolved": [], "not_jetson": [], "output": r.stdout + r.stderr}
    if r.returncode == 0:
        for item in json.loads(report.read_text())["install"]:
            wheel = item["download_info"]["url"].rsplit("/", 1)[-1].split("#")[0]
            out["installs"].append((item["metadata"]["name"], item["metadata"]["version"], wheel))
            if not wheel.endswith(".whl") or not set(parse_wheel_filename(wheel)[3]) & JETSON_TAGS:
                out["not_jetson"].append(wheel)
        return out
    for pin in pins(req_file):
        if pip_jetson(tmp, ["--no-deps", pin]).returncode != 0:
            out["unresolved"].append(pin)
    return out


needs_py38 = pytest.mark.skipif(not PY38.exists(), reason=f"{PY38} missing: `make setup38` makes it from pyenv's "
                                "Python 3.8.18; pip's markers must be evaluated by a 3.8 to resolve like the board")


@needs_py38
def test_device_pins_resolve_to_jetson_wheels(tmp_path):
    res = resolve(REQS, tmp_path)
    assert not res["unresolved"], (f"{REQS.name}: no CPython 3.8 manylinux aarch64 wheel for: "
                                   f"{', '.join(res['unresolved'])}\n{res['output'][-3000:]}")
    assert res["installs"], f"{REQS.name} does not resolve (a conflict, or a dependency without a wheel):\n" \
                            f"{res['output'][-3000:]}"
    assert not res["not_jetson"], f"resolved to files the board cannot install: {res['not_jetson']}"
    names = {n.lower() for n, _, _ in res["installs"]}
    assert {"numpy", "onnxruntime", "tokenizers"} <= names
    assert not names & {"numba", "llvmlite"}   # the controller's loops are C (edge_runtime._kernels)
    assert "torch" not in names and "opencv-python-headless" not in names   # JetPack brings OpenCV


@needs_py38
def test_pin_check_catches_a_pin_without_a_jetson_wheel(tmp_path):
    req = tmp_path / "planted.txt"
    req.write_text("tqdm\nnumpy==2.1.0   # Python >= 3.10: no cp38 wheel\n")
    res = resolve(req, tmp_path)
    assert res["unresolved"] == ["numpy==2.1.0"], res
