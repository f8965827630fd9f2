"""The device side never needs torch (Polygraphy's test_dependencies): import every edge_runtime module and
run every `edge-infer [cmd] -h` in a fresh interpreter where importing torch fails."""
import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked on the device side (import of {name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")

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
