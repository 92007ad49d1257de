"""Greedy generation on a (tiny, tokenizer-less) checkpoint; dumps tokens, logprobs, the
quantization vLLM resolved, and each linear / MoE layer's quant method.

    python -m tests.e2e.quant_generate --model DIR --out FILE.json [--quantization NAME]

Run once per process (the platform is chosen once per process), like tests.e2e.generate.
"""

from __future__ import annotations

import argparse
import json

PROMPTS = [[1, 5, 9, 17, 33, 65], [1, 100, 7, 7, 42], [1, 3]]


def quant_methods(model) -> dict[str, str]:
    """``{module name: quant method class (+ scheme type)}`` for layers with a quant method."""
    out = {}
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None or not name.endswith(("proj", "experts")):
            continue
        scheme = getattr(method, "scheme", None)
        out[name] = type(method).__name__ + (f":{scheme.quant_type}" if scheme else "")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    llm = LLM(args.model, dtype="float32", max_model_len=128, seed=0, enforce_eager=True,
              skip_tokenizer_init=True, quantization=args.quantization)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, logprobs=2,
                            ignore_eos=True, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    results = []
    for prompt, out in zip(PROMPTS, outputs):
        completion = out.outputs[0]
        top = [{str(t): lp.logprob for t, lp in pos.items()} for pos in completion.logprobs]
        results.append({"prompt": prompt, "token_ids": list(completion.token_ids), "top": top})
    from tests.e2e.quant_generate import quant_methods as probe

    report = {
        "quantization": llm.llm_engine.vllm_config.model_config.quantization,
        "methods": llm.apply_model(probe)[0],
        "results": results,
    }
    with open(args.out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
