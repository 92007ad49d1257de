"""Decode throughput of quantized checkpoints through the plugin: fp32 vs W8A8_DYNAMIC vs
W4A8_DYNAMIC (default model SmolLM2-135M-Instruct), each against the memory-bandwidth floor.

``python -m bench quant-decode`` quantizes the model once per scheme with
``vllm_ascend.tools.quantize`` (cached under ``$VLLM_ASCEND_CACHE/bench/quantized/``), then
runs each checkpoint in a fresh ``python -m bench.decode --child --backend plugin`` process
(the decode benchmark's own child: same prompts, warm-up, timing and checks), and writes one
JSON with, per scheme and batch size:

- ``tokens_per_second``: end-to-end generate throughput (as ``bench decode``); ``ratio_vs_fp32``;
- ``decode_tokens_per_second``: ``batch * 1000 / median TPOT``, the pure decode rate;
- ``weight_bytes_per_step``: bytes of the weights one decode step streams as the plugin holds
  them after loading (decoder linear weights at 4 / 1 / 0.5 bytes per element for fp32 /
  int8 / int4, their scales, norms, and the lm_head matrix: the fp32 embedding for SmolLM2's
  tied embeddings, or the int8 ``lm_head`` of checkpoints quantized with ``--lm-head``, the
  default here: ``--lm-head FLOAT`` keeps it float);
- ``bandwidth_floor_ms``: ``weight_bytes_per_step / copy bandwidth`` (``bench.quant_gemm``'s
  large-tensor clone, read + write bytes per second), the time a step cannot beat, and
  ``bandwidth_ceiling_tokens_per_second = batch * 1000 / floor``; ``fraction_of_ceiling`` =
  decode rate / ceiling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, csv_list, git_commit, machine_info, run_logged
from bench.fingerprint import config_from_args, fingerprint

DEFAULT_SCHEMES = ["fp32", "W8A8_DYNAMIC", "W4A8_DYNAMIC"]
FP32 = "fp32"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def quantized_dir(model: Path, scheme: str, group_size: int | None, lm_head: str,
                  requantize: bool) -> Path:
    """The cached checkpoint of ``model`` in ``scheme`` with ``lm_head`` (quantized now if
    missing)."""
    from vllm_ascend.tools.prepare_model import cache_dir

    if scheme == FP32:
        return model
    tag = scheme + (f"-g{group_size}" if group_size is not None else "") + f"-lm_{lm_head}"
    out = cache_dir() / "bench" / "quantized" / f"{model.name}-{tag}"
    if (out / "config.json").is_file() and not requantize:
        return out
    cmd = [sys.executable, "-m", "vllm_ascend.tools.quantize", "--model", str(model), "--scheme",
           scheme, "--out", str(out), "--force", "--no-progress", "--lm-head", lm_head]
    if group_size is not None:
        cmd += ["--group-size", str(group_size)]
    _log(f"quantizing {model.name} to {scheme} -> {out}")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"quantizing to {scheme} failed (exit {proc.returncode})")
    return out


def weight_bytes_per_step(model_dir: Path) -> int:
    """Bytes one decode step reads (see the module docstring), from the safetensors headers,
    the description (per-tensor types) and config.json (tied embeddings)."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))
    desc_path = model_dir / "quant_model_description.json"
    desc = json.loads(desc_path.read_text()) if desc_path.is_file() else {}
    shapes, sizes = {}, {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_slice(name)
                shapes[name] = t.get_shape()
                numel = 1
                for d in shapes[name]:
                    numel *= d
                sizes[name] = numel * {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
                                       "I8": 1, "U8": 1}.get(t.get_dtype(), 4)
    total = 0
    for name, nbytes in sizes.items():
        if "embed_tokens" in name and not tied:
            continue  # a gather of a few rows per step
        kind = desc.get(name, "FLOAT")
        if kind.startswith("W4") and name.endswith(".weight"):
            n = shapes[name[: -len("weight")] + "weight_scale"][0]
            nbytes = n * shapes[name][-1] // 2  # int4 after loading, either layout
        total += nbytes
    return total


def run_child(scheme: str, model_dir: Path, args, log, result: Path) -> dict:
    from bench.decode import _child_env

    cmd = [sys.executable, "-m", "bench.decode", "--child", "--backend", "plugin", "--model",
           str(model_dir), "--batch-sizes", ",".join(map(str, args.batch_sizes)),
           "--output-len", str(args.output_len), "--repeats", str(args.repeats),
           "--result", str(result)] + (["--enforce-eager"] if args.enforce_eager else [])
    env = _child_env("plugin")
    env["VLLM_CACHE_ROOT"] = env["VLLM_CACHE_ROOT"] + f"-{scheme}"
    log.write(f"\n===== {scheme}: {' '.join(cmd)}\n")
    log.flush()
    rc, tail = run_logged(cmd, env, log, args.verbose,
                          lambda line: line.replace("[bench] plugin", f"[bench] {scheme}"))
    if rc != 0 or not result.is_file():
        sys.stderr.write("".join(tail))
        return {"error": f"exit {rc}", "tail": "".join(tail[-8:])}
    return json.loads(result.read_text())


def run(args) -> int:
    from bench.quant_gemm import copy_bandwidth
    from vllm_ascend.tools.prepare_model import default_model_dir, is_prepared

    args.model = Path(args.model) if args.model else default_model_dir()
    if not args.model.is_dir() or (args.model == default_model_dir()
                                   and not is_prepared(args.model)):
        raise SystemExit(f"model checkpoint not found at {args.model}; run `make setup` first")
    stamp = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out) if args.out else RESULTS_DIR / f"quant-decode-{stamp:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    t0 = time.perf_counter()
    dirs = {s: quantized_dir(args.model, s, args.group_size if s.startswith("W4") else None,
                             args.lm_head, args.requantize) for s in args.schemes}
    bandwidth = copy_bandwidth()
    _log(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s; child logs: {out.with_suffix('.log')}")
    children = {}
    with open(out.with_suffix(".log"), "w", encoding="utf-8") as log, \
            tempfile.TemporaryDirectory() as tmp:
        for i, scheme in enumerate(args.schemes):
            _log(f"process {i + 1}/{len(args.schemes)}: {scheme} ({dirs[scheme]})")
            children[scheme] = run_child(scheme, dirs[scheme], args, log, Path(tmp) / f"{i}.json")
    results = results_table(children, dirs, bandwidth, args)
    doc = {
        "benchmark": "quant-decode", "date": stamp.isoformat(timespec="seconds"),
        "plugin_commit": git_commit(), "machine": machine | {
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "model": args.model.name, "copy_bandwidth_gbs": round(bandwidth / 1e9, 2),
        "repeats": args.repeats, "enforce_eager": args.enforce_eager,
        "lm_head": args.lm_head,
        "primary_metric": "tokens_per_second", "higher_is_better": True,
        "processes": [{"scheme": s, **{k: c.get(k) for k in ("platform", "startup_s", "error")}}
                      for s, c in children.items()],
        "total_runtime_s": round(time.perf_counter() - t0, 1),
        "results": results,
        "fingerprint": fingerprint(config_from_args(args)),
    }
    for k in ("vllm_version", "torch_version", "plugin_version"):
        doc[k] = next((c[k] for c in children.values() if k in c), None)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(results, bandwidth))
    print(f"wrote {out} ({doc['total_runtime_s']:.0f} s)")
    return 1 if any("error" in c for c in children.values()) else 0


def results_table(children: dict, dirs: dict, bandwidth: float, args) -> list[dict]:
    rows = []
    for scheme, child in children.items():
        wbytes = weight_bytes_per_step(dirs[scheme])
        floor_ms = wbytes / bandwidth * 1e3
        for bs in args.batch_sizes:
            row = {"scheme": scheme, "model": args.model.name, "batch_size": bs,
                   "output_len": args.output_len, "weight_bytes_per_step": wbytes,
                   "bandwidth_floor_ms": round(floor_ms, 3),
                   "bandwidth_ceiling_tokens_per_second": round(bs * 1e3 / floor_ms, 1)}
            runs = [r for r in child.get("runs", []) if r["batch_size"] == bs]
            if not runs:
                rows.append(row | {"error": child.get("error", "no result")})
                continue
            samples = [round(x, 2) for r in runs for x in r["samples"]]
            tpot = [x for r in runs for x in r["tpot_ms"]]
            tps = round(statistics.median(samples), 2)
            decode = round(bs * 1e3 / statistics.median(tpot), 2) if tpot else None
            ceiling = row["bandwidth_ceiling_tokens_per_second"]
            row |= {"tokens_per_second": tps, "samples": samples,
                    "median_tpot_ms": round(statistics.median(tpot), 3) if tpot else None,
                    "decode_tokens_per_second": decode,
                    "fraction_of_ceiling": round(decode / ceiling, 3) if decode else None}
            rows.append(row)
    base = {r["batch_size"]: r.get("tokens_per_second") for r in rows if r["scheme"] == FP32}
    for r in rows:
        if base.get(r["batch_size"]) and r.get("tokens_per_second"):
            r["ratio_vs_fp32"] = round(r["tokens_per_second"] / base[r["batch_size"]], 3)
    return rows


def table(rows: list[dict], bandwidth: float) -> str:
    lines = [f"copy bandwidth {bandwidth / 1e9:.2f} GB/s",
             "scheme          batch   tok/s  x fp32  decode tok/s  MB/step  floor ms  "
             "ceiling tok/s  of ceiling"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['scheme']:<15} {r['batch_size']:>5}  failed: {r['error']}")
            continue
        lines.append(
            f"{r['scheme']:<15} {r['batch_size']:>5} {r['tokens_per_second']:>7.1f} "
            f"{r.get('ratio_vs_fp32', float('nan')):>7.3f} "
            f"{r['decode_tokens_per_second'] or 0:>13.1f} "
            f"{r['weight_bytes_per_step'] / 1e6:>8.1f} {r['bandwidth_floor_ms']:>9.2f} "
            f"{r['bandwidth_ceiling_tokens_per_second']:>14.1f} "
            f"{r['fraction_of_ceiling'] or 0:>11.3f}")
    return "\n".join(lines)


def _schemes(s: str) -> list[str]:
    from vllm_ascend.tools.quantize_plan import MODELSLIM_SCHEMES

    items = csv_list(str)(s)
    bad = [x for x in items if x != FP32 and x not in MODELSLIM_SCHEMES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown scheme(s) {bad}; accepted: fp32, {', '.join(MODELSLIM_SCHEMES)}")
    return list(dict.fromkeys(items))


def add_parser(sub) -> None:
    p = sub.add_parser("quant-decode", help="decode throughput of quantized checkpoints "
                       "(fp32 vs W8A8_DYNAMIC vs W4A8_DYNAMIC) vs the bandwidth floor",
                       description=__doc__.splitlines()[0])
    p.add_argument("--schemes", type=_schemes, default=list(DEFAULT_SCHEMES),
                   help="comma-separated, default " + ",".join(DEFAULT_SCHEMES))
    p.add_argument("--out", help="result JSON (default: bench/results/quant-decode-<time>.json)")
    p.add_argument("--batch-sizes", type=csv_list(int), default=[1, 8], help="default 1,8")
    p.add_argument("--output-len", type=int, default=128, help="tokens per request (128)")
    p.add_argument("--repeats", type=int, default=4, help="timed generates per batch size (4: `bench compare` needs >= 4 samples)")
    p.add_argument("--model", help="fp32 source checkpoint (default: the prepared SmolLM2)")
    p.add_argument("--group-size", type=int, default=None,
                   help="W4 group size (default: the quantizer's: 256, or the largest power of "
                   "two dividing every layer, 64 for SmolLM2)")
    p.add_argument("--lm-head", default="W8A8_DYNAMIC", type=str.upper,
                   choices=("FLOAT", "W8A8_DYNAMIC", "W8A16"),
                   help="lm_head of the quantized checkpoints (quantizer --lm-head; default "
                   "W8A8_DYNAMIC: SmolLM2's tied 113 MB fp32 lm_head is a third of the fp32 "
                   "model's bytes per step; FLOAT keeps it)")
    p.add_argument("--requantize", action="store_true", help="quantize again even if cached")
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile")
    p.add_argument("-v", "--verbose", action="store_true", help="show the children's vLLM logs")
    p.set_defaults(run=run)
