"""`edge-infer`: the device-side command line. Subcommands are thin: parse, call, print."""
import argparse
import sys

from edge_runtime import __version__
from edge_runtime.errors import EdgeError, Exit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-infer", description="Adaptive-depth inference on the device.")
    p.add_argument("--version", action="version", version=f"edge-infer {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of a user error")
    p.add_subparsers(dest="command", metavar="COMMAND")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return Exit.OK
        return Exit.OK
    except EdgeError as err:
        if args.traceback:
            raise
        print(f"edge-infer: {err}", file=sys.stderr)
        return err.exit
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
