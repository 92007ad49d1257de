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


def greedy_results(llm, prompts, max_tokens: int) -> list[dict]:
    """Greedy generation (ignore_eos): per prompt its text, prompt and generated token ids,
    and per position {token_id: logprob} of the top-2 candidates (and the chosen one)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=2, ignore_eos=True)
    results = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        completion = out.outputs[0]
        top = [{str(t): lp.logprob for t, lp in pos.items()} for pos in completion.logprobs]
        results.append({"prompt": out.prompt, "prompt_token_ids": list(out.prompt_token_ids),
                        "token_ids": list(completion.token_ids), "top": top})
    return results


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

    from vllm import LLM
    from vllm.platforms import current_platform

    llm = LLM(
        args.model,
        dtype="float32",
        max_model_len=512,
        seed=0,
        enforce_eager=args.eager,
    )
    results = greedy_results(llm, PROMPTS, args.max_tokens)
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
