"""The device side never needs torch (Polygraphy's test_dependencies): import every edge_runtime module and
run every `edge-infer [cmd] -h` in a fresh interpreter where importing torch fails."""
import subprocess
import sys
import textwrap

from conftest import import_blocker

BLOCK_TORCH = import_blocker("torch")

CHECK = BLOCK_TORCH + textwrap.dedent("""
    import argparse, contextlib, importlib, io, pkgutil
    import edge_runtime

    names = ["edge_runtime"] + [m.name for m in pkgutil.walk_packages(edge_runtime.__path__, "edge_runtime.")]
    for name in names:
        importlib.import_module(name)

    from edge_runtime.tools import cli

    def run(argv):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
        assert code in (0, None), (argv, code)
        return buf.getvalue()

    assert "edge-infer" in run(["--help"])
    assert "edge-infer" in run(["--version"])
    run([])
    sub = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = [c for a in sub for c in a.choices]
    for c in commands:
        run([c, "-h"])
    assert "torch" not in sys.modules
    print("OK", len(names), "modules", len(commands), "commands")
""")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_edge_runtime_imports_and_cli_without_torch():
    proc = run_python(CHECK)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK ")


def test_the_blocker_blocks():
    """The check above can fail: the same blocker stops torch and anything importing it."""
    for stmt in ("import torch", "import edge_model.models.layers"):
        proc = run_python(BLOCK_TORCH + stmt)
        assert proc.returncode != 0 and "torch is blocked" in proc.stderr, stmt


# The rooms of edge_runtime and what each may import (DESIGN.md 6, STYLE.md): imports run one way,
# tools -> runtime (the API) and io -> backends -> core.
ROOMS = {"core": {"core"}, "backends": {"core", "backends"}, "io": {"core", "io"},
         "runtime": {"core", "backends", "runtime"}, "tools": {"core", "backends", "io", "runtime", "tools"}}


def room(module: str) -> str:
    """'core' for edge_runtime.core.x, 'runtime' for edge_runtime.runtime, ...; None outside edge_runtime."""
    parts = module.split(".")
    if parts[0] != "edge_runtime" or len(parts) == 1 or parts[1] not in ROOMS:
        return None   # outside edge_runtime, or the package itself (its __version__)
    return parts[1]


def imports_of(path) -> list:
    """(line, module) of every edge_runtime import in a file, at any depth (lazy imports count too)."""
    import ast
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.lineno, node.module + ("." + a.name if node.module == "edge_runtime" else ""))
                      for a in node.names]
    return [(line, m) for line, m in found if m.startswith("edge_runtime")]


def direction_violations(root) -> list:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        here = room(".".join(rel.with_suffix("").parts))
        if here is None or here == "__init__":
            continue
        for line, module in imports_of(path):
            there = room(module)
            if there is not None and there not in ROOMS.get(here, set()):
                bad.append(f"{rel}:{line} ({here}) imports {module} ({there})")
    return bad


def test_imports_run_one_way():
    import edge_runtime
    from pathlib import Path
    root = Path(edge_runtime.__file__).parent
    assert set(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__") == {
        "core", "backends", "io", "tools"}
    assert direction_violations(root) == []


def test_the_direction_check_can_fail(tmp_path):
    pkg = tmp_path / "edge_runtime"
    (pkg / "core").mkdir(parents=True)
    (pkg / "core" / "bad.py").write_text("def f():\n    from edge_runtime.tools.cli import main\n")
    (pkg / "io").mkdir()
    (pkg / "io" / "fine.py").write_text("from edge_runtime.core.errors import EdgeError\n")
    assert direction_violations(pkg) == ["edge_runtime/core/bad.py:2 (core) imports edge_runtime.tools.cli (tools)"]
