"""``bench <subcommand>`` (or ``python -m bench``): decode, quant-decode, serve, moe, eplb,
eplb-serve, ops (run a benchmark), run (several suites in sequence), compare (two result
files), ab (two commits built, run interleaved and compared)."""

from __future__ import annotations

import argparse
import os
import sys

from bench import ab, compare, decode, eplb, eplb_serve, moe, ops, quant_decode, serve
from bench import run as run_suites


def build_parser() -> argparse.ArgumentParser:
    prog = "bench" if os.path.basename(sys.argv[0]) == "bench" else "python -m bench"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="vllm-ascend benchmarks (plugin vs vanilla vLLM); see docs/benchmarks.md",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    decode.add_parser(sub)
    quant_decode.add_parser(sub)
    serve.add_parser(sub)
    moe.add_parser(sub)
    eplb.add_parser(sub)
    eplb_serve.add_parser(sub)
    ops.add_parser(sub)
    run_suites.add_parser(sub)
    compare.add_parser(sub)
    ab.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
