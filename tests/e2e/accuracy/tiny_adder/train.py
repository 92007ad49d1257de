"""Train the tiny adder: a ~0.64M-parameter Llama on 3-digit addition (see ``data.py``).

    python -m tests.e2e.accuracy.tiny_adder.train [--out DIR] [--steps N] [--threads T]

Writes a Hugging Face checkpoint vLLM loads (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, generation_config.json) and ``train_log.json`` (loss curve, final
validation exact match). Each sequence is ``<s> 123+456= 9750 </s>``; the loss covers the
answer digits and EOS only. Validation is greedy exact match on seeded pairs outside the
held-out split. About 8 minutes on 2 CPU threads; deterministic for a given seed and thread
count.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from tests.e2e.accuracy.tiny_adder import data, tokenizer

MODEL_DIR = Path(__file__).with_name("model")
PROMPT_LEN = 1 + len(data.prompt(0, 0))  # BOS + "123+456="
ANSWER_LEN = data.DIGITS + 2  # 4 digits + EOS


def model_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer.VOCAB), hidden_size=128, intermediate_size=384,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.BOS_ID,
        eos_token_id=tokenizer.EOS_ID, pad_token_id=tokenizer.PAD_ID, torch_dtype="float32",
    )


def batch(pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids (B, L), labels (B, L)): labels are -100 except on answer digits and EOS."""
    rows = [[tokenizer.BOS_ID, *tokenizer.encode(data.prompt(a, b) + data.target(a, b)),
             tokenizer.EOS_ID] for a, b in pairs]
    ids = torch.tensor(rows)
    labels = ids.clone()
    labels[:, :PROMPT_LEN] = -100
    return ids, labels


@torch.no_grad()
def exact_match(model, pairs: list[tuple[int, int]]) -> float:
    """Greedy decoding of ANSWER_LEN tokens; a hit needs the digits and then EOS."""
    model.eval()
    ids = torch.tensor([[tokenizer.BOS_ID, *tokenizer.encode(data.prompt(a, b))]
                        for a, b in pairs])
    for _ in range(ANSWER_LEN):
        nxt = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    want = torch.tensor([[*tokenizer.encode(data.target(a, b)), tokenizer.EOS_ID]
                         for a, b in pairs])
    model.train()
    return (ids[:, PROMPT_LEN:] == want).all(dim=1).float().mean().item()


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(out: Path, steps: int, batch_size: int, lr: float, seed: int, threads: int) -> dict:
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config())
    n_params = sum(p.numel() for p in model.parameters())
    heldout = set(data.heldout_pairs())
    stream = data.training_pairs(seed, heldout)
    val_rng = random.Random(seed + 1)
    val = [p for p in ((val_rng.randrange(1000), val_rng.randrange(1000)) for _ in range(600))
           if p not in heldout][:500]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    log = {"params": n_params, "steps": steps, "batch_size": batch_size, "lr": lr,
           "seed": seed, "threads": threads, "loss": [], "val_exact_match": []}
    start = time.monotonic()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=100)
        ids, labels = batch([next(stream) for _ in range(batch_size)])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log["loss"].append([step, round(loss.item(), 5)])
        if step % 250 == 249 or step == steps - 1:
            em = exact_match(model, val)
            log["val_exact_match"].append([step, em])
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} val EM {em:.3f} "
                  f"({time.monotonic() - start:.0f}s)", flush=True)
    log["seconds"] = round(time.monotonic() - start, 1)
    log["final_val_exact_match"] = log["val_exact_match"][-1][1]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    model.generation_config.save_pretrained(out)
    tokenizer.save(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    log = train(args.out, args.steps, args.batch_size, args.lr, args.seed, args.threads)
    print(f"{log['params']} parameters, val exact match {log['final_val_exact_match']:.3f} "
          f"in {log['seconds']}s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
