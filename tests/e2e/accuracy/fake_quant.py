"""W8A8_DYNAMIC's loss on SmolLM2's arithmetic task, measured without the plugin.

    python -m tests.e2e.accuracy.fake_quant [--items 160] [--keep-float down_proj ...]

An independent check of the accuracy gate's finding (docs/accuracy.md): Hugging Face's
SmolLM2 in plain PyTorch with every decoder linear fake-quantized the W8A8_DYNAMIC way
(weights int8 per output channel, activations int8 per token, both symmetric; no smoothing),
scored teacher-forced on the gate's items: an item counts when every answer token is the
argmax (5-shot prompts as the task builds them, shots drawn with a fixed seed). Prints fp32,
all quantized, and all quantized but the linears named by each ``--keep-float`` (module
suffixes such as ``down_proj`` or ``q_proj|k_proj|v_proj``, optionally ``@i,j`` for layers
i and j only). Takes about 20 s
per line for 160 items on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from tests.e2e.conftest import REPO

DATA = REPO / "tests" / "e2e" / "accuracy" / "tasks" / "data"


def fake_int8(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Symmetric int8 round trip with one scale per slice along ``dim`` (absmax / 127)."""
    scale = x.abs().amax(dim, keepdim=True).clamp(min=1e-8) / 127
    return (x / scale).round().clamp(-127, 127) * scale


def items(tokenizer, n: int, shots: int = 5, seed: int = 1234):
    """(token ids of prompt + " answer\\n", prompt length) per test item."""
    fewshot = [json.loads(line) for line in open(DATA / "arith_fewshot.jsonl")]
    test = [json.loads(line) for line in open(DATA / "arith_test.jsonl")][:n]
    rng, out = random.Random(seed), []
    for t in test:
        ctx = "\n\n".join(f"Question: {s['question']}\nAnswer: {s['answer']}"
                          for s in rng.sample(fewshot, shots))
        ctx += f"\n\nQuestion: {t['question']}\nAnswer:"
        prompt = tokenizer(ctx)["input_ids"]
        full = tokenizer(ctx + " " + t["answer"] + "\n")["input_ids"]
        assert full[:len(prompt)] == prompt, "the answer must tokenize after the prompt"
        out.append((full, len(prompt)))
    return out


class FakeQuant:
    """Switches a model's decoder linears between float and fake W8A8_DYNAMIC."""

    def __init__(self, model: torch.nn.Module):
        self.linears = {n: m for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"}
        self.float_w = {n: m.weight.data.clone() for n, m in self.linears.items()}
        self.quant_w = {n: fake_int8(w, 1) for n, w in self.float_w.items()}
        self.active: set[str] = set()
        for name, module in self.linears.items():
            module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str):
        def pre(_module, args):
            return (fake_int8(args[0], -1),) if name in self.active else None
        return pre

    def quantize(self, names: set[str]) -> None:
        self.active = set(names)
        for name, module in self.linears.items():
            module.weight.data = self.quant_w[name] if name in names else self.float_w[name]

    def matching(self, spec: str) -> set[str]:
        """Linears named by ``suffix[|suffix...][@i,j,...]``."""
        suffixes, _, layers = spec.partition("@")
        wanted = {int(i) for i in layers.split(",")} if layers else None
        found = {n for n in self.linears if n.endswith(tuple(suffixes.split("|"))) and (
            wanted is None or any(f"layers.{i}." in n for i in wanted))}
        if not found:
            raise SystemExit(f"--keep-float {spec}: no decoder linear matches; suffixes: "
                             + ", ".join(sorted({n.rsplit('.', 1)[-1] for n in self.linears})))
        return found


@torch.no_grad()
def score(model, batch: list[tuple[list[int], int]], pad: int, size: int = 20):
    """(teacher-forced exact match, mean answer NLL) over ``batch``."""
    correct, nll = 0, 0.0
    for b in range(0, len(batch), size):
        chunk = batch[b:b + size]
        width = max(len(f) for f, _ in chunk)
        ids = torch.full((len(chunk), width), pad)
        mask = torch.zeros_like(ids)
        for i, (full, _) in enumerate(chunk):
            ids[i, :len(full)], mask[i, :len(full)] = torch.tensor(full), 1
        logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        for i, (full, start) in enumerate(chunk):
            target = torch.tensor(full[start:])
            lp = logp[i, start - 1:len(full) - 1]
            correct += bool((lp.argmax(-1) == target).all())
            nll -= float(lp.gather(1, target[:, None]).sum())
    return correct / len(batch), nll / len(batch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=160, help="test items (of 300)")
    p.add_argument("--keep-float", action="append", default=[], metavar="SUFFIX[|SUFFIX][@i,j]",
                   help="also score with these linears float (repeatable)")
    a = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_ascend.tools.prepare_model import prepare

    path = str(prepare())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    batch, pad = items(tokenizer, a.items), tokenizer.pad_token_id or 0
    fq = FakeQuant(model)
    every = set(fq.linears)
    rows = [("fp32", set()), ("W8A8_DYNAMIC (fake)", every)]
    rows += [(f"... but {spec} float", every - fq.matching(spec)) for spec in a.keep_float]
    print(f"SmolLM2 5-shot addition, {len(batch)} items, teacher-forced")
    for label, names in rows:
        fq.quantize(names)
        acc, nll = score(model, batch, pad)
        print(f"  {label:<40} exact match {acc:.3f}   answer NLL {nll:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
