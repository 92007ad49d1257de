"""Write the locally generated few-shot task data (``data/*.jsonl``; committed).

    python -m tests.e2e.accuracy.tasks.generate

- ``arith``: "Question: What is 23 + 45?\\nAnswer:" -> "68" (1-2 digit operands), generated
  greedily, exact match; a separate few-shot split;
- ``mc``: "Question: What is 7 + 5?\\nAnswer:" with four numeric options (the sum and three
  near misses), scored by loglikelihood (acc, acc_norm); a separate few-shot split.

Seeded; the few-shot split shares no question with the test split.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).with_name("data")
SEED = 2026
SIZES = {"test": 300, "fewshot": 20}


def _pairs(rng: random.Random, n: int, hi: int, seen: set) -> list[tuple[int, int]]:
    out = []
    while len(out) < n:
        pair = (rng.randint(1, hi), rng.randint(1, hi))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def arith(a: int, b: int) -> dict:
    return {"question": f"What is {a} + {b}?", "answer": str(a + b)}


def mc(a: int, b: int, rng: random.Random) -> dict:
    s = a + b
    wrong = rng.sample([d for d in (s - 2, s - 1, s + 1, s + 2, s + 10, s - 10) if d >= 0], 3)
    choices = [str(c) for c in [s, *wrong]]
    rng.shuffle(choices)
    return {"question": f"What is {a} + {b}?", "choices": choices, "label": choices.index(str(s))}


def main() -> int:
    DATA.mkdir(exist_ok=True)
    rng = random.Random(SEED)
    for name, hi in (("arith", 99), ("mc", 20)):
        seen: set = set()
        for split, n in SIZES.items():
            docs = [arith(a, b) if name == "arith" else mc(a, b, rng)
                    for a, b in _pairs(rng, n, hi, seen)]
            path = DATA / f"{name}_{split}.jsonl"
            path.write_text("".join(json.dumps(d) + "\n" for d in docs))
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
