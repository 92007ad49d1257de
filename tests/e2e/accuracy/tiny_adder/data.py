"""The tiny adder's synthetic task: 3-digit addition, sum written least-significant digit first.

A document is ``{"a": 123, "b": 456, "prompt": "123+456=", "target": "9750"}``: operands
zero-padded to 3 digits, the sum zero-padded to 4 digits and *reversed* (579 -> "0579" ->
"9750"), so that each output digit depends only on operand digits and the carry the model
has just written (the usual layout for teaching a small transformer arithmetic).

The held-out split (``heldout.jsonl``, committed) is a seeded sample of pairs; training never
sees one of them (:func:`training_pairs` rejects them). ``calib.txt`` (committed) holds
whole training-distribution documents (``123+456=9750``), one per line: the calibration
prompts of the static W8A8 gate (``quantize --calib-file``), since the quantizer's built-in
English prompts are mostly ``<unk>`` to this character tokenizer.

    python -m tests.e2e.accuracy.tiny_adder.data --out heldout.jsonl [--n 500] [--seed 1234]
    python -m tests.e2e.accuracy.tiny_adder.data --calib-out calib.txt [--n 64]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path

DIGITS = 3
HELDOUT_SEED = 1234
HELDOUT_SIZE = 500
HELDOUT_PATH = Path(__file__).with_name("heldout.jsonl")
CALIB_PATH = Path(__file__).with_name("calib.txt")
CALIB_SEED = 4321
CALIB_SIZE = 64


def prompt(a: int, b: int) -> str:
    """``"123+456="`` for (123, 456)."""
    return f"{a:0{DIGITS}d}+{b:0{DIGITS}d}="


def target(a: int, b: int) -> str:
    """The reversed, zero-padded sum: ``"9750"`` for (123, 456)."""
    return f"{a + b:0{DIGITS + 1}d}"[::-1]


def document(a: int, b: int) -> dict:
    for name, value in (("a", a), ("b", b)):
        if not 0 <= value < 10 ** DIGITS:
            raise ValueError(f"operand {name}={value} must be in [0, {10 ** DIGITS})")
    return {"a": a, "b": b, "prompt": prompt(a, b), "target": target(a, b)}


def heldout_pairs(n: int = HELDOUT_SIZE, seed: int = HELDOUT_SEED) -> list[tuple[int, int]]:
    """``n`` distinct seeded (a, b) pairs."""
    rng = random.Random(seed)
    pairs: dict[tuple[int, int], None] = {}
    while len(pairs) < n:
        pairs[(rng.randrange(10 ** DIGITS), rng.randrange(10 ** DIGITS))] = None
    return list(pairs)


def training_pairs(seed: int, exclude: set[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """An endless seeded stream of (a, b) pairs not in ``exclude``."""
    rng = random.Random(seed)
    while True:
        pair = (rng.randrange(10 ** DIGITS), rng.randrange(10 ** DIGITS))
        if pair not in exclude:
            yield pair


def calibration_texts(n: int = CALIB_SIZE, seed: int = CALIB_SEED) -> list[str]:
    """``n`` whole documents (prompt + target) of training pairs, none held out."""
    pairs = training_pairs(seed, set(heldout_pairs()))
    return [prompt(a, b) + target(a, b) for a, b in (next(pairs) for _ in range(n))]


def load_heldout(path: Path = HELDOUT_PATH) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def write_jsonl(docs: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HELDOUT_PATH)
    parser.add_argument("--calib-out", type=Path, help="write calibration documents instead")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.calib_out:
        texts = calibration_texts(args.n or CALIB_SIZE, args.seed or CALIB_SEED)
        args.calib_out.write_text("".join(t + "\n" for t in texts))
        print(args.calib_out)
        return 0
    args.n, args.seed = args.n or HELDOUT_SIZE, args.seed or HELDOUT_SEED
    write_jsonl([document(a, b) for a, b in heldout_pairs(args.n, args.seed)], args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
