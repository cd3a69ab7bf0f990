"""``unidiffuser-batch``: the product's command line."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from unidiffuser import cli as engine_cli


def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    checkpoint = Path(tempfile.mkdtemp(prefix="unidiffuser-tiny-"))
    engine_cli.main(["tiny-checkpoint", str(checkpoint)])
    return engine_cli.main(["sample", str(checkpoint), "--out", str(out), "--steps", "10"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unidiffuser-batch", description="Run UniDiffuser over datasets on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded demo on CPU with the tiny checkpoint")
    demo.add_argument("--out", default="demo-output")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
