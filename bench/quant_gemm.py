"""Micro-benchmark of the reference backend's quantised GEMMs at SmolLM2-135M's linear shapes.

``python -m bench.quant_gemm`` (or ``python bench/quant_gemm.py``) times one call of:

- ``fp32``: ``F.linear`` on the fp32 weight (what the unquantised plugin runs);
- ``w8a8``: W8A8_DYNAMIC's ``npu_dynamic_quant`` + ``npu_quant_matmul`` (int8 weight in the
  NZ-cast (K, N) layout, per-channel scale, per-token scale), through the facade;
- ``w8a16``: ``npu_weight_quant_batchmatmul`` with an int8 weight, per-channel scale;
- ``w4``: W4A16's linear, ``npu_weight_quant_batchmatmul`` with a packed int4 weight
  (K, N/8) and per-group scales (``--group``, default 64);
- ``a8w4``: ``npu_dynamic_quant`` + the A8W4 ``npu_grouped_matmul`` (int8 activations x
  packed int4 weight, per-group scales, float bias, per-token scale; list form): the
  W4A8_DYNAMIC linear layers' and experts' product, on csrc's ``a8w4_mm_cached``;
- ``w8a8_exact`` / ``w4_exact`` (``--exact``): the same ops on their plain PyTorch path.

Weights rotate over enough copies to exceed the last-level cache (``--cache-mb``), so each
call streams its weight from memory as in decode. ``floor_*`` is the memory-bandwidth floor:
weight bytes / the copy bandwidth measured with a large tensor clone (read + write bytes /
time). Prints a table and writes JSON (default ``bench/results/quant_gemm-<time>.json``).
Timings are the best of ``--repeats`` rounds (the machine is shared: the minimum is the
least disturbed estimate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # python bench/quant_gemm.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

#: SmolLM2-135M linears per layer: (name, K, N).
SHAPES = [("qkv", 576, 960), ("o", 576, 576), ("k/v", 576, 192), ("gate_up", 576, 3072),
          ("down", 1536, 576)]


def _results_dir() -> Path:
    try:
        from bench import RESULTS_DIR
        return RESULTS_DIR
    except ImportError:
        return Path(__file__).resolve().parent / "results"


def _machine() -> dict:
    try:
        from bench import machine_info
        return machine_info()
    except ImportError:
        return {}


def copy_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by cloning a large tensor (read + write bytes / time). The
    clone goes into a tensor allocated and touched once, so page faults of fresh memory
    are not counted."""
    src = torch.empty(mb * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = src.clone()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def _time(calls, repeats: int, min_seconds: float = 0.05) -> float:
    """Best per-call seconds over ``repeats`` rounds; each round cycles through ``calls``."""
    for fn in calls[:2]:
        fn()
    rounds, per_round = 0, 0.0
    t = time.perf_counter()
    while time.perf_counter() - t < min_seconds or rounds < 1:
        for fn in calls:
            fn()
        rounds += 1
    per_round = max(1, rounds)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(per_round):
            for fn in calls:
                fn()
        best = min(best, (time.perf_counter() - t) / (per_round * len(calls)))
    return best


def _copies(nbytes: int, cache_mb: int, cap: int = 512) -> int:
    return max(2, min(cap, -(-cache_mb * 2**20 // max(1, nbytes))))


def bench_shape(k: int, n: int, m: int, args, ops, cpu_kernels) -> dict:
    g = torch.Generator().manual_seed(k * 7919 + n)
    x = torch.randn(m, k, generator=g)
    group = args.group if args.group and k % args.group == 0 else 0
    groups = k // group if group else 1
    row = {"K": k, "N": n, "M": m, "group": group}

    def variant(name, nbytes, make_call):
        copies = _copies(nbytes, args.cache_mb)
        calls = [make_call(i) for i in range(copies)]
        row[name + "_us"] = round(_time(calls, args.repeats) * 1e6, 2)
        row[name + "_copies"] = copies

    # fp32 F.linear
    variant("fp32", 4 * k * n, lambda i: (lambda w=torch.randn(n, k, generator=g):
                                          F.linear(x, w)))

    def w8a8_call(i):
        w = ops.npu_format_cast(torch.randint(-127, 128, (n, k), generator=g,
                                              dtype=torch.int8).t().contiguous(), 29)
        s = torch.rand(n, generator=g) * 0.01 + 1e-3

        def call():
            xq, xs = ops.npu_dynamic_quant(x)
            return ops.npu_quant_matmul(xq, w, s, pertoken_scale=xs, output_dtype=x.dtype)
        return call
    variant("w8a8", k * n, w8a8_call)

    def w8a16_call(i):
        w = ops.npu_format_cast(torch.randint(-127, 128, (n, k), generator=g,
                                              dtype=torch.int8).t().contiguous(), 29)
        s = torch.rand(n, generator=g) * 0.01 + 1e-3
        return lambda: ops.npu_weight_quant_batchmatmul(x, w, s)
    variant("w8a16", k * n, w8a16_call)

    def w4_call(i):
        v = torch.randint(-8, 8, (k, n), generator=g, dtype=torch.int32)
        w = ops.npu_convert_weight_to_int4pack(v)
        s = torch.rand(groups, n, generator=g) * 0.01 + 1e-3
        return lambda: ops.npu_weight_quant_batchmatmul(x, w, s, antiquant_group_size=group)
    variant("w4", k * n // 2, w4_call)

    def a8w4_call(i):
        v = torch.randint(-8, 8, (k, n), generator=g, dtype=torch.int32)
        w = ops.npu_convert_weight_to_int4pack(v)
        s = torch.rand(groups, n, generator=g) * 0.01 + 1e-3
        b = torch.rand(n, generator=g)

        def call():
            xq, xs = ops.npu_dynamic_quant(x)
            return ops.npu_grouped_matmul([xq], [w], scale=[s], bias=[b], per_token_scale=[xs],
                                          output_dtype=x.dtype)[0]
        return call
    variant("a8w4", k * n // 2, a8w4_call)

    if args.exact:
        saved = cpu_kernels.force_exact
        cpu_kernels.force_exact = True
        try:
            for name, make in (("w8a8_exact", w8a8_call), ("w4_exact", w4_call)):
                calls = [make(0), make(1)]
                row[name + "_us"] = round(_time(calls, max(1, args.repeats // 2), 0.0) * 1e6, 2)
        finally:
            cpu_kernels.force_exact = saved
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quant_gemm", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", default="1,8,64", help="rows (tokens) per call, comma-separated")
    p.add_argument("--group", type=int, default=64, help="int4 group size (0: per-channel)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cache-mb", type=int, default=96,
                   help="weight bytes to rotate through per variant (beyond the LLC)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--exact", action="store_true",
                   help="also time the plain PyTorch path of w8a8 and w4 (slow)")
    p.add_argument("--avx2", action="store_true",
                   help="use the kernels' AVX2 paths only (with ONEDNN_MAX_CPU_ISA=AVX2 and "
                        "MKL_ENABLE_INSTRUCTIONS=AVX2 in the environment: an AVX2-only CPU)")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    os.environ.setdefault("VLLM_ASCEND_DEVICE_BACKEND", "reference")
    from vllm_ascend.device import ops
    from vllm_ascend.device.reference import cpu_kernels

    if args.avx2:
        cpu_kernels.use_avx512 = False
        cpu_kernels.a8w4_isa = 0
    ms = [int(v) for v in args.m.split(",") if v.strip()]
    bw = copy_bandwidth()
    info = {"kernels": cpu_kernels.describe(), "threads": torch.get_num_threads(),
            "isa_env": {v: os.environ.get(v) for v in ("ONEDNN_MAX_CPU_ISA",
                                                        "MKL_ENABLE_INSTRUCTIONS",
                                                        "ATEN_CPU_CAPABILITY")},
            "copy_bandwidth_gbs": round(bw / 1e9, 2), "machine": _machine(),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    print(f"threads {info['threads']}, copy bandwidth {bw / 1e9:.1f} GB/s, "
          f"kernels {info['kernels']}", flush=True)
    cols = ["fp32", "w8a8", "w8a16", "w4", "a8w4"] + (["w8a8_exact", "w4_exact"] if args.exact
                                                      else [])
    head = f"{'layer':>8} {'K':>5} {'N':>5} {'M':>3} |" + "".join(f"{c:>11}" for c in cols) \
        + " |" + "".join(f"{c:>9}" for c in ("floor32", "floor8", "floor4")) + " | x fp32 (w8a8, w4)"
    print(head + "\n" + "-" * len(head), flush=True)
    rows = []
    for name, k, n in SHAPES:
        for m in ms:
            row = bench_shape(k, n, m, args, ops, cpu_kernels)
            row["layer"] = name
            for tag, nbytes in (("floor32", 4 * k * n), ("floor8", k * n),
                                ("floor4", k * n // 2)):
                row[tag + "_us"] = round(nbytes / bw * 1e6, 2)
            rows.append(row)
            speed = (row["fp32_us"] / row["w8a8_us"], row["fp32_us"] / row["w4_us"])
            print(f"{name:>8} {k:5d} {n:5d} {m:3d} |"
                  + "".join(f"{row[c + '_us']:11.1f}" for c in cols) + " |"
                  + "".join(f"{row[t + '_us']:9.1f}" for t in ("floor32", "floor8", "floor4"))
                  + f" | {speed[0]:4.1f}x {speed[1]:4.1f}x", flush=True)
    for m in ms:  # one decoder layer: qkv + o + gate_up + down
        layer = [r for r in rows if r["M"] == m and r["layer"] != "k/v"]
        tot = {c: sum(r[c + "_us"] for r in layer) for c in cols}
        print(f"{'layer':>8} {'':>5} {'sum':>5} {m:3d} |"
              + "".join(f"{tot[c]:11.1f}" for c in cols)
              + f" | x fp32: w8a8 {tot['fp32'] / tot['w8a8']:.2f}, w4 {tot['fp32'] / tot['w4']:.2f}")
    out = args.out or _results_dir() / \
        f"quant_gemm-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
