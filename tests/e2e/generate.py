"""Run greedy generation in this process and dump tokens, logprobs and what the plugin replaced.

    python -m tests.e2e.generate --model DIR --out FILE.json [--eager] [--max-tokens 32]

The e2e tests run it once with the plugin and once with VLLM_ASCEND_PLATFORM=off (vanilla
vLLM), each in a fresh process: the platform is chosen once per process.
"""

from __future__ import annotations

import argparse
import json

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Here is a short poem about the sea:",
    "Question: What is 12 times 7? Answer:",
    "The three primary colors are",
]


def layer_classes(model) -> list[str]:
    """Qualified class names of the model's norm / rotary / activation layers (runs in the worker)."""
    names = set()
    for module in model.modules():
        cls = type(module)
        if any(k in cls.__name__ for k in ("RMSNorm", "Rotary", "SiluAndMul")):
            names.add(f"{cls.__module__}.{cls.__qualname__}")
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    llm = LLM(
        args.model,
        dtype="float32",
        max_model_len=512,
        seed=0,
        enforce_eager=args.eager,
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=args.max_tokens, logprobs=2, ignore_eos=True
    )
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    results = []
    for out in outputs:
        completion = out.outputs[0]
        # Per position: {token_id: logprob} for the top-2 candidates (and the chosen one).
        top = [{str(t): lp.logprob for t, lp in pos.items()} for pos in completion.logprobs]
        results.append({"prompt": out.prompt, "token_ids": list(completion.token_ids), "top": top})
    # Run as __main__, pickle would name this module "__main__", which the worker lacks.
    from tests.e2e.generate import layer_classes as probe

    platform = type(current_platform)
    report = {
        "platform": f"{platform.__module__}.{platform.__qualname__}",
        "layers": llm.apply_model(probe)[0],
        "results": results,
    }
    with open(args.out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
