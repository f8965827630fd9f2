"""`python pip_as_jetson.py ARGS...`: `python -m pip ARGS...` with environment markers evaluated as on a Jetson.

pip evaluates requirement markers (`; platform_machine == "aarch64"`, `; python_version < "3.9"`) against
the interpreter running it, whatever --platform and --python-version say (those pick wheel tags only).
Run under Python 3.8 (.venv38) with platform.machine() reporting aarch64, a dry-run resolution follows
the same dependency branches as `pip install` on JetPack 5's Python 3.8. Used by tests/test_py38_static.py.
"""
import platform
import runpy
import sys

if __name__ == "__main__":
    platform.machine = lambda: "aarch64"
    sys.argv = ["pip"] + sys.argv[1:]
    runpy.run_module("pip", run_name="__main__", alter_sys=True)
