"""``python -m bench <subcommand>``: decode, moe, quant-decode, eplb, eplb-serve (run a
benchmark), compare (two result files)."""

from __future__ import annotations

import argparse
import sys

from bench import compare, decode, eplb, eplb_serve, moe, quant_decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="vllm-ascend benchmarks (plugin vs vanilla vLLM); see docs/benchmarks.md",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    decode.add_parser(sub)
    quant_decode.add_parser(sub)
    moe.add_parser(sub)
    eplb.add_parser(sub)
    eplb_serve.add_parser(sub)
    compare.add_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
