"""MoE benchmarks: comm methods at 1/2/4 ranks, plugin vs vanilla MoE layer, tiny DeepSeek decode.

``python -m bench moe [--parts comm,layer,quant,decode]`` runs, each part in fresh processes
(quant: in this one):

- ``comm``: ``moe_forward`` called directly (prepare -> select -> dispatch -> grouped MLP ->
  combine -> finalize) with each comm method, in ``W`` spawned gloo processes per world
  size (W=1: this process, no group; mc2 needs W > 1). Every rank holds ``E/W`` experts and
  its own tokens. Latency: one forward on the slowest rank (``--iters`` forwards between
  barriers, median over ``--repeats``). Outputs are checked against the allgather method's.
- ``layer``: one MoE layer per ``--layer-shapes`` entry (the tiny models' shapes and a realistic
  64 experts / hidden 2048 / intermediate 1408 / top-6) built by vLLM's ``FusedMoEFactory`` (no engine), plugin (its
  runner + float method; comm chosen per step) vs vanilla vLLM CPU (``VLLM_ASCEND_PLATFORM=off``:
  ``CPURouter`` + ``cpu_fused_moe``), a fresh process each, same seeded weights and inputs;
  the parent checks that the two outputs agree.
- ``quant``: the grouped expert MLP of W8A8_DYNAMIC / W4A8_DYNAMIC experts vs the plugin's
  float experts on the ``--layer-shapes`` (``bench/moe_quant.py``).
- ``decode``: the tiny models of ``vllm_ascend.tools.tiny_model`` (``--decode-models``:
  Qwen3-MoE and DeepSeek-V3) served offline, decode tokens/s at batch ``--batch-sizes``:
  single process, plugin and vanilla vLLM CPU (``VLLM_ASCEND_PLATFORM=off``, its own compile
  cache), a fresh process each (ratio plugin / vanilla tok/s: > 1, plugin faster); and the
  plugin at EP2 (``tensor_parallel_size=2`` + ``enable_expert_parallel``, DeepSeek-V3).

Writes JSON like ``bench decode`` (``results``: one entry per configuration, ``part`` naming
the part; primary metric ``latency_ms``, decode entries carry ``tokens_per_second``).
On 2 cores, 4 ranks oversubscribe the CPU: those numbers include scheduling noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, csv_choices, csv_list, git_commit, machine_info
from bench.fingerprint import config_from_args, fingerprint
from bench.decode import PROMPTS, _log, _median

PARTS = ("comm", "layer", "quant", "decode")
METHODS = ("allgather", "all2allv", "mc2")
LAYER_BACKENDS = ("vanilla", "plugin")


def _shape(args) -> dict:
    return {"hidden": args.hidden, "intermediate": args.intermediate, "experts": args.experts,
            "top_k": args.top_k}


def _weights(shape: dict, seed: int = 0):
    """Expert weights in vLLM's checkpoint layout: w13 (E, 2I, H), w2 (E, H, I)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    e, h, i = shape["experts"], shape["hidden"], shape["intermediate"]
    return (torch.randn(e, 2 * i, h, generator=g) * h ** -0.5,
            torch.randn(e, h, i, generator=g) * i ** -0.5)


def _inputs(shape: dict, tokens: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, shape["hidden"], generator=g),
            torch.randn(tokens, shape["experts"], generator=g))


def _time(fn, iters: int, repeats: int, barrier=lambda: None) -> list[float]:
    """Milliseconds per call, one sample per repeat (after two warm-up calls)."""
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        barrier()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        barrier()
        samples.append((time.perf_counter() - start) / iters * 1e3)
    return samples


# --- comm: moe_forward per comm method ----------------------------------------------------------
def _comm_cases(world: int, rank: int, group, cfg: dict) -> list[dict]:
    import torch

    from vllm_ascend.device import ops
    from vllm_ascend.ops.fused_moe import get_comm_method, moe_forward

    ops.bind()
    torch.set_num_threads(1)
    shape = cfg["shape"]
    w13, w2 = _weights(shape)
    local = shape["experts"] // world
    w13 = w13[rank * local:(rank + 1) * local].transpose(1, 2).contiguous()
    w2 = w2[rank * local:(rank + 1) * local].transpose(1, 2).contiguous()
    barrier = (lambda: torch.distributed.barrier(group)) if group is not None else lambda: None
    out = []
    for tokens in cfg["tokens"]:
        x, logits = _inputs(shape, tokens, seed=1000 * rank + tokens)
        reference = None
        for method in cfg["methods"]:
            if method == "mc2" and group is None:
                continue
            comm = get_comm_method(method)(group, shape["experts"])

            def step():
                return moe_forward(x, logits, w13, w2, top_k=shape["top_k"], comm=comm,
                                   renormalize=True)

            y = step()
            reference = y if reference is None else reference
            samples = _time(step, cfg["iters"], cfg["repeats"], barrier)
            out.append({"part": "comm", "method": method, "world_size": world,
                        "tokens_per_rank": tokens, **shape,
                        "latency_ms": _median(samples, 3),
                        "samples": [round(s, 3) for s in samples],
                        "max_abs_diff_vs_first": float((y - reference).abs().max())})
    return out


def _comm_rank(rank: int, world: int, init: str, cfg: dict, result: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        rows = _comm_cases(world, rank, dist.group.WORLD, cfg)
        if rank == 0:
            Path(result).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def run_comm(args) -> list[dict]:
    import torch.multiprocessing as mp

    cfg = {"shape": _shape(args), "tokens": args.tokens, "methods": args.methods,
           "iters": args.iters, "repeats": args.repeats}
    rows = []
    for world in args.worlds:
        _log(f"comm: {world} rank(s), methods {', '.join(args.methods)}")
        if world == 1:
            rows += _comm_cases(1, 0, None, cfg)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "comm.json"
            mp.spawn(_comm_rank, args=(world, f"file://{tmp}/store", cfg, str(result)),
                     nprocs=world, join=True)
            rows += json.loads(result.read_text())
    return rows


# --- layer / decode children --------------------------------------------------------------------
def _layer_child(a) -> dict:
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.forward_context import set_forward_context
    from vllm.model_executor.layers.fused_moe import FusedMoEFactory

    torch.set_num_threads(1)
    if a.backend == "plugin":
        from vllm_ascend.plugin import register_all

        register_all()
    shape = json.loads(a.shape)
    cfg = VllmConfig()
    with set_current_vllm_config(cfg):
        layer = FusedMoEFactory(
            num_experts=shape["experts"], top_k=shape["top_k"], hidden_size=shape["hidden"],
            intermediate_size=shape["intermediate"], params_dtype=torch.float32,
            renormalize=True, tp_size=1, dp_size=1, pcp_size=1, prefix="bench.mlp.experts")
        routed = layer.routed_experts
        w13, w2 = _weights(shape)
        routed.w13_weight.data.copy_(w13)
        routed.w2_weight.data.copy_(w2)
        routed.quant_method.process_weights_after_loading(routed)
    rows, outputs = [], {}
    for tokens in a.tokens:
        x, logits = _inputs(shape, tokens, seed=tokens)
        with set_current_vllm_config(cfg), set_forward_context(None, cfg):
            outputs[tokens] = layer(x, logits)
            samples = _time(lambda: layer(x, logits), a.iters, a.repeats)
        rows.append({"part": "layer", "backend": a.backend, "tokens": tokens, **shape,
                     "latency_ms": _median(samples, 3), "samples": [round(s, 3) for s in samples]})
        _log(f"layer {a.backend}: {tokens} tokens: {rows[-1]['latency_ms']} ms")
    torch.save(outputs, a.result + ".pt")
    return {"classes": [type(layer).__name__, type(routed.quant_method).__name__], "rows": rows}


def _decode_child(a) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=a.model, dtype="float32", max_model_len=512, seed=0,
              enforce_eager=not a.compiled, tensor_parallel_size=a.tp,
              enable_expert_parallel=a.tp > 1, max_num_seqs=max(a.batch_sizes))
    params = SamplingParams(temperature=0.0, max_tokens=a.output_len, ignore_eos=True)
    rows = []
    for bs in a.batch_sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up, untimed
        samples = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            samples.append(bs * a.output_len / (time.perf_counter() - start))
        rows.append({"part": "decode", "model": f"tiny-{a.arch}", "backend": a.backend,
                     "ep_size": a.tp, "tensor_parallel_size": a.tp,
                     "enforce_eager": not a.compiled,
                     "batch_size": bs, "output_len": a.output_len,
                     "tokens_per_second": _median(samples, 2),
                     "samples": [round(s, 2) for s in samples]})
        _log(f"decode tiny-{a.arch} {a.backend} EP{a.tp}: batch {bs}: "
             f"{rows[-1]['tokens_per_second']} tok/s")
    return {"rows": rows}


def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.moe --child")
    p.add_argument("--child", choices=("layer", "decode"), required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--backend", choices=LAYER_BACKENDS)
    p.add_argument("--shape")
    p.add_argument("--tokens", type=csv_list(int))
    p.add_argument("--model")
    p.add_argument("--arch", default="deepseek_v3")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--compiled", action="store_true")
    p.add_argument("--batch-sizes", type=csv_list(int))
    for name in ("--iters", "--repeats", "--output-len"):
        p.add_argument(name, type=int, default=1)
    a = p.parse_args(argv)
    doc = _layer_child(a) if a.child == "layer" else _decode_child(a)
    Path(a.result).write_text(json.dumps(doc))
    return 0


def _run_child(cmd: list[str], env: dict, log) -> dict:
    result = cmd[cmd.index("--result") + 1]
    log.write(f"\n===== {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not Path(result).is_file():
        raise SystemExit(f"child failed (exit {proc.returncode}): {' '.join(cmd)}; log: {log.name}")
    return json.loads(Path(result).read_text())


def _env(backend: str, **extra: str) -> dict:
    env = dict(os.environ, **extra)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if backend == "vanilla":
        env["VLLM_ASCEND_PLATFORM"] = "off"
    elif env.get("VLLM_ASCEND_PLATFORM", "").strip().lower() == "off":
        del env["VLLM_ASCEND_PLATFORM"]
    return env


#: MoE layer shapes of ``--parts layer``: the tiny models' (vllm_ascend.tools.tiny_model) and a
#: realistic one (DeepSeek-V2-Lite / Qwen1.5-MoE-like: 64 experts, hidden 2048, 1408, top-6).
LAYER_SHAPES = {
    "tiny-qwen3_moe": {"hidden": 128, "intermediate": 64, "experts": 16, "top_k": 4},
    "tiny-deepseek_v3": {"hidden": 128, "intermediate": 64, "experts": 64, "top_k": 8},
    "realistic": {"hidden": 2048, "intermediate": 1408, "experts": 64, "top_k": 6},
}


def run_layer(args, log, tmp: Path) -> tuple[list[dict], dict]:
    """Plugin vs vanilla MoE layer for every ``--layer-shapes`` entry ("args": the --hidden,
    --intermediate, --experts, --top-k shape)."""
    import torch

    rows, info, diffs = [], {}, {}
    for name in args.layer_shapes:
        shape = _shape(args) if name == "args" else LAYER_SHAPES[name]
        outputs = {}
        for backend in LAYER_BACKENDS:
            _log(f"layer {name}: {backend} (fresh process)")
            result = str(tmp / f"layer-{name}-{backend}.json")
            cmd = [sys.executable, "-m", "bench.moe", "--child", "layer", "--backend", backend,
                   "--shape", json.dumps(shape), "--tokens", ",".join(map(str, args.tokens)),
                   "--iters", str(args.iters), "--repeats", str(args.repeats), "--result", result]
            doc = _run_child(cmd, _env(backend), log)
            rows += [dict(r, shape=name) for r in doc["rows"]]
            info[f"{backend}_classes"] = doc["classes"]
            outputs[backend] = torch.load(result + ".pt")
        diffs[name] = max(float((outputs["plugin"][t] - outputs["vanilla"][t]).abs().max())
                          for t in args.tokens)
    info["max_abs_diff_plugin_vs_vanilla"] = max(diffs.values())
    info["max_abs_diff_plugin_vs_vanilla_per_shape"] = diffs
    return rows, info


DECODE_MODELS = ("qwen3_moe", "deepseek_v3")


def _decode_runs(models: list[str]) -> list[tuple[str, str, int]]:
    """(arch, backend, EP size) of each decode child, in order: per model vanilla and plugin
    in one process, then the plugin at EP2 for DeepSeek-V3."""
    runs = [(arch, backend, 1) for arch in models for backend in LAYER_BACKENDS]
    return runs + [("deepseek_v3", "plugin", 2)] * ("deepseek_v3" in models)


def decode_ratios(rows: list[dict]) -> dict[str, float]:
    """``decode_<model>_plugin_over_vanilla_batch_<b>``: plugin / vanilla tok/s, one process
    (> 1: the plugin is faster)."""
    tps = {(r["model"], r.get("backend", "plugin"), r["ep_size"], r["batch_size"]):
           r["tokens_per_second"] for r in rows if r["part"] == "decode"}
    return {f"decode_{m}_plugin_over_vanilla_batch_{b}": round(v / tps[m, "vanilla", 1, b], 3)
            for (m, backend, ep, b), v in tps.items()
            if backend == "plugin" and ep == 1 and (m, "vanilla", 1, b) in tps}


def run_decode(args, log, tmp: Path) -> list[dict]:
    from vllm_ascend.tools.prepare_model import cache_dir
    from vllm_ascend.tools.tiny_model import generate

    rows = []
    for arch, backend, ep in _decode_runs(args.decode_models):
        model = cache_dir() / "bench" / f"tiny-{arch}"
        if not (model / "config.json").is_file():
            generate(arch, model, seed=0, force=True)
        _log(f"decode: tiny {arch} {backend} EP{ep} (fresh vLLM: start-up 1-3 min)")
        result = str(tmp / f"decode-{arch}-{backend}-ep{ep}.json")
        cmd = [sys.executable, "-m", "bench.moe", "--child", "decode", "--model", str(model),
               "--arch", arch, "--backend", backend, "--tp", str(ep),
               "--batch-sizes", ",".join(map(str, args.batch_sizes)),
               "--output-len", str(args.output_len), "--repeats", str(args.repeats),
               "--result", result] + ["--compiled"] * args.compiled
        env = _env(backend, **({"VLLM_CPU_OMP_THREADS_BIND": "0|1"} if ep == 2 else {}))
        # vLLM's compile cache key ignores the platform: one cache per backend
        env["VLLM_CACHE_ROOT"] = str(cache_dir() / "bench" / f"vllm-cache-moe-{backend}-ep{ep}")
        rows += _run_child(cmd, env, log)["rows"]
    return rows


def _table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["part"] == "comm":
            lines.append(f"comm   W={r['world_size']} {r['method']:<9} "
                         f"tokens/rank={r['tokens_per_rank']:<5} {r['latency_ms']:>9.3f} ms")
        elif r["part"] == "quant":
            lines.append(f"quant  {r['shape']:<16} {r['backend']:<12} tokens={r['tokens']:<5} "
                         f"{r['latency_ms']:>9.3f} ms")
        elif r["part"] == "layer":
            lines.append(f"layer  {r['shape']:<16} {r['backend']:<9} tokens={r['tokens']:<5} "
                         f"{r['latency_ms']:>9.3f} ms")
        else:
            lines.append(f"decode {r['model']:<16} {r.get('backend', 'plugin'):<9} "
                         f"EP{r['ep_size']} batch={r['batch_size']:<3} "
                         f"{r['tokens_per_second']:>9.1f} tok/s")
    return "\n".join(lines)


def run(args) -> int:
    import torch
    import vllm

    import vllm_ascend

    if any(w < 1 for w in args.worlds) or min(args.iters, args.repeats) < 1:
        raise SystemExit("--worlds, --iters and --repeats must be >= 1")
    if args.experts % max(args.worlds):
        raise SystemExit(f"--experts {args.experts} must be a multiple of every world size")
    stamp = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out) if args.out else RESULTS_DIR / f"moe-{stamp:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine, t0 = machine_info(), time.perf_counter()
    rows, extra, ratios = [], {}, {}
    with open(out.with_suffix(".log"), "w", encoding="utf-8") as log, \
            tempfile.TemporaryDirectory() as tmp:
        if "comm" in args.parts:
            rows += run_comm(args)
        if "layer" in args.parts:
            layer_rows, extra = run_layer(args, log, Path(tmp))
            rows += layer_rows
            ms = {(r["shape"], r["backend"], r["tokens"]): r["latency_ms"] for r in layer_rows}
            ratios = {f"layer_{name}_plugin_over_vanilla_tokens_{t}":
                      round(ms[name, "plugin", t] / ms[name, "vanilla", t], 3)
                      for name in args.layer_shapes for t in args.tokens}
        if "quant" in args.parts:
            from bench.moe_quant import run_quant

            shapes = {n: _shape(args) if n == "args" else LAYER_SHAPES[n] for n in args.layer_shapes}
            quant_rows, quant_ratios = run_quant(shapes, args.quant_tokens, args.iters,
                                                 args.repeats, _log)
            rows += quant_rows
            ratios.update(quant_ratios)
        if "decode" in args.parts:
            decode_rows = run_decode(args, log, Path(tmp))
            rows += decode_rows
            ratios.update(decode_ratios(decode_rows))
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "benchmark": "moe", "date": stamp.isoformat(timespec="seconds"),
        "vllm_version": vllm.__version__, "torch_version": torch.__version__,
        "plugin_version": vllm_ascend.__version__, "plugin_commit": git_commit(),
        "machine": machine, "parts": args.parts, "iters": args.iters, "repeats": args.repeats,
        "primary_metric": "latency_ms", "higher_is_better": False,
        "total_runtime_s": round(time.perf_counter() - t0, 1),
        "results": rows, "ratios": ratios, **extra,
        "fingerprint": fingerprint(config_from_args(args)),
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(_table(rows))
    for k, v in ratios.items():
        what = ("float / scheme latency; > 1: scheme faster" if k.startswith("quant_") else
                "tok/s ratio; > 1: plugin faster" if k.startswith("decode_") else
                "latency ratio; < 1: plugin faster")
        print(f"{k}: {v:.3f} ({what})")
    if extra:
        diff = extra["max_abs_diff_plugin_vs_vanilla"]
        print(f"layer outputs, max |plugin - vanilla|: {diff:.2e}")
    print(f"wrote {out} ({doc['total_runtime_s']:.0f} s)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("moe", help="MoE: comm methods at 1/2/4 ranks, plugin vs vanilla layer, "
                       "tiny MoE decode plugin vs vanilla (and EP2)", description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=csv_choices(PARTS, "part"), default=list(PARTS),
                   help="comm,layer,quant,decode")
    p.add_argument("--out", help="result JSON (default: bench/results/moe-<UTC time>.json)")
    p.add_argument("--worlds", type=csv_list(int), default=[1, 2, 4], help="comm ranks (1,2,4)")
    p.add_argument("--methods", type=csv_choices(METHODS, "method"), default=list(METHODS), help="allgather,all2allv,mc2")
    p.add_argument("--tokens", type=csv_list(int), default=[1, 16, 256],
                   help="tokens per rank (comm) / per call (layer); default 1,16,256")
    p.add_argument("--layer-shapes", type=csv_choices(tuple(LAYER_SHAPES) + ("args",), "shape"),
                   default=list(LAYER_SHAPES),
                   help="layer part: " + ",".join(LAYER_SHAPES) + " (default: all) or args "
                   "(the --hidden/--intermediate/--experts/--top-k shape)")
    p.add_argument("--quant-tokens", type=csv_list(int), default=[1, 4, 16],
                   help="quant part: tokens per call (1,4,16)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=256, help="per-expert intermediate size")
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--iters", type=int, default=10, help="forwards per timed sample (10)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed samples per configuration (5; `bench compare` needs >= 4)")
    p.add_argument("--batch-sizes", type=csv_list(int), default=[1, 8], help="decode (1,8)")
    p.add_argument("--decode-models", type=csv_choices(DECODE_MODELS, "model"),
                   default=list(DECODE_MODELS), help="decode part: " + ",".join(DECODE_MODELS))
    p.add_argument("--output-len", type=int, default=64, help="decode tokens per request (64)")
    p.add_argument("--compiled", action="store_true", help="decode with torch.compile (slow start)")
    p.set_defaults(run=run)


if __name__ == "__main__":
    if "--child" not in sys.argv[1:]:
        raise SystemExit("run `python -m bench moe` (this module's own entry is for children)")
    sys.exit(child_main(sys.argv[1:]))
