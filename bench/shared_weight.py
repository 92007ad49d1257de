"""Shared-weight linear layers: added latency per layer vs unsharded, broadcast bandwidth.

``python -m bench shared-weight [--sizes 1024x1024,...,16384x7168] [--out PATH]``

Two ranks (gloo, one core each: the machine's two cores) run a stack of ``--layers`` blocks:
a W8A8_DYNAMIC ``o_proj`` (``K -> N``, int8 weight + fp32 scale: the series) followed by an
unsharded W8A8_DYNAMIC ``K <- N`` layer standing in for the rest of the decoder layer, on
``--tokens`` tokens (a decode batch). Modes: ``unsharded`` (every rank stores every o_proj)
and ``prefetch_step`` 0 / 1 / 2 (each rank stores every other o_proj; the others arrive by
broadcast into the ring). Per size and mode: per-layer latency (a pass / layers; every
sample kept), the time blocked in the ring's waits (the transfer compute did not hide), the
per-rank bytes of the series (live tensors, ring included). Per size: the bandwidth a
plain blocking broadcast of one layer reaches. From these: whether the broadcast hides
behind the compute between uses (P x the compute per layer vs the broadcast time), and the
compute per layer it would need to.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench import RESULTS_DIR, git_commit, machine_info
from bench.fingerprint import config_from_args, fingerprint
from bench.procs import free_port

DEFAULT_SIZES = "1024x1024,2048x2048,4096x4096,8192x7168,16384x7168"
MODES = ("unsharded", "P0", "P1", "P2")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _size(s: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {s!r}: expected KxN, e.g. 16384x7168") from None
    return k, n


def _sizes(s: str) -> list[tuple[int, int]]:
    return [_size(x) for x in s.split(",") if x.strip()]


def _o(i: int) -> str:
    return f"model.layers.{i}.self_attn.o_proj"


def _build(layers: int, k: int, n: int):
    """The block stack (see the module docstring), W8A8_DYNAMIC through the plugin's config."""
    import torch
    from vllm.model_executor.layers.linear import ReplicatedLinear

    from vllm_ascend.quantization.description import parse_description
    from vllm_ascend.quantization.modelslim_config import AscendQuantConfig

    names = [_o(i) for i in range(layers)] + [f"model.layers.{i}.mlp.down_proj"
                                               for i in range(layers)]
    config = AscendQuantConfig(parse_description({f"{p}.weight": "W8A8_DYNAMIC"
                                                  for p in names}, "bench.json"))

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList()
            for i in range(layers):
                blk = torch.nn.Module()
                blk.self_attn = torch.nn.Module()
                blk.self_attn.o_proj = ReplicatedLinear(k, n, bias=False, quant_config=config,
                                                        prefix=_o(i), return_bias=False)
                blk.mlp = torch.nn.Module()
                blk.mlp.down_proj = ReplicatedLinear(n, k, bias=False, quant_config=config,
                                                     prefix=f"model.layers.{i}.mlp.down_proj",
                                                     return_bias=False)
                self.model.layers.append(blk)

        def forward(self, x):
            for blk in self.model.layers:
                x = blk.mlp.down_proj(blk.self_attn.o_proj(x))
            return x

    return Stack()


def _load(model, skips=lambda name: False) -> None:
    import torch

    for name, m in model.named_modules():
        if not hasattr(m, "quant_method") or skips(f"{name}.weight"):
            continue
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        n, k = m.weight.shape
        m.weight.weight_loader(m.weight, torch.randint(-127, 128, (n, k), generator=g,
                                                       dtype=torch.int8))
        m.weight_scale.weight_loader(m.weight_scale, torch.full((n, 1), 0.5 / k ** 0.5))
        m.weight_offset.weight_loader(m.weight_offset, torch.zeros(n, 1))


def _process(model) -> None:
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    for m in model.modules():
        if isinstance(getattr(m, "quant_method", None), QuantizeMethodBase):
            m.quant_method.process_weights_after_loading(m)


def _time_passes(model, x, warmup: int, repeats: int, layers: int, rings) -> dict:
    import torch
    import torch.distributed as dist

    per_layer, waits = [], []
    with torch.no_grad():
        for i in range(warmup + repeats):
            dist.barrier()
            w0 = sum(r.wait_seconds for r in rings)
            t0 = time.perf_counter()
            model(x)
            dt_ = time.perf_counter() - t0
            if i >= warmup:
                per_layer.append(dt_ / layers * 1e3)
                waits.append((sum(r.wait_seconds for r in rings) - w0) / layers * 1e3)
    return {"per_layer_ms": per_layer, "wait_ms": waits}


def _bandwidth(group, nbytes: int, repeats: int) -> list[float]:
    """GB/s of a blocking broadcast of ``nbytes`` (roots alternate)."""
    import torch
    import torch.distributed as dist

    buf = torch.zeros(nbytes, dtype=torch.uint8)
    out = []
    for i in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.broadcast(buf, src=group.global_rank(i % group.size), group=group.group)
        if i:
            out.append(nbytes / (time.perf_counter() - t0) / 1e9)
    return out


def _worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    result: dict = {"sizes": []}
    try:
        from vllm.config import VllmConfig, set_current_vllm_config
        from vllm.distributed import parallel_state as ps

        from vllm_ascend.quantization import register
        from vllm_ascend.shared_weight.config import LayerShardingConfig
        from vllm_ascend.shared_weight.group import new_groups
        from vllm_ascend.shared_weight.sharding import attach_sharding, plan_sharding

        register()
        with set_current_vllm_config(VllmConfig()):
            ps.init_distributed_environment(
                world_size=world, rank=rank, local_rank=rank, backend="gloo",
                distributed_init_method=f"tcp://127.0.0.1:{port}",
                timeout=dt.timedelta(seconds=600))
            ps.initialize_model_parallel(1, 1)
            group = new_groups([tuple(range(world))], "gloo")
            layers = cfg["layers"]
            for k, n in cfg["sizes"]:
                row = {"k": k, "n": n, "layer_bytes": n * k + 4 * n, "modes": {}}
                row["bandwidth_gbps"] = _bandwidth(group, row["layer_bytes"], cfg["repeats"])
                x = torch.randn(cfg["tokens"], k, generator=torch.Generator().manual_seed(0))
                for mode in cfg["modes"]:
                    t0 = time.perf_counter()
                    model = _build(layers, k, n)
                    rings, plan = [], None
                    if mode != "unsharded":
                        sc = LayerShardingConfig(("o_proj",), int(mode[1:]))
                        plan = plan_sharding(model, sc, group)
                    _load(model, plan.skips if plan else (lambda name: False))
                    _process(model)
                    if plan is not None:
                        rings = [rt.ring for rt in attach_sharding(plan)]
                    rec = _time_passes(model, x, cfg["warmup"], cfg["repeats"], layers, rings)
                    series = 0
                    for i in range(layers):
                        m = model.get_submodule(_o(i))
                        series += sum(t.nbytes for t in list(m.parameters(recurse=False)))
                    rec["series_bytes"] = series + sum(r.buffer_bytes for r in rings)
                    row["modes"][mode] = rec
                    if rank == 0:
                        p50 = sorted(rec["per_layer_ms"])[len(rec["per_layer_ms"]) // 2]
                        _log(f"{k}x{n} {mode}: {p50:.2f} ms/layer, series "
                             f"{rec['series_bytes'] / 2**20:.1f} MiB/rank "
                             f"({time.perf_counter() - t0:.0f} s)")
                    for r in rings:
                        r.drain()
                    del model, plan, rings
                result["sizes"].append(row)
        ps.destroy_model_parallel()
        ps.destroy_distributed_environment()
    except Exception:  # noqa: BLE001 - reported to the parent
        result["error"] = traceback.format_exc()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)


def _p50(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def summarize(rows: list[dict]) -> list[dict]:
    """Per size: added latency per mode, the hiding verdict, the compute needed to hide."""
    out = []
    for row in rows:
        base = _p50(row["modes"]["unsharded"]["per_layer_ms"])
        bw = _p50(row["bandwidth_gbps"])
        bcast_ms = row["layer_bytes"] / (bw * 1e9) * 1e3
        s = {"k": row["k"], "n": row["n"], "layer_bytes": row["layer_bytes"],
             "unsharded_ms_per_layer": round(base, 3), "bandwidth_gbps_p50": round(bw, 3),
             "broadcast_ms": round(bcast_ms, 3),
             "broadcast_over_compute": round(bcast_ms / base, 3), "modes": {}}
        for mode, rec in row["modes"].items():
            if mode == "unsharded":
                continue
            p = int(mode[1:])
            added = _p50(rec["per_layer_ms"]) - base
            s["modes"][mode] = {
                "ms_per_layer": round(_p50(rec["per_layer_ms"]), 3),
                "added_ms_per_layer": round(added, 3),
                "added_fraction": round(added / base, 3),
                "wait_ms_per_layer": round(_p50(rec["wait_ms"]), 3),
                "series_bytes": rec["series_bytes"],
                "series_fraction": round(
                    rec["series_bytes"] / row["modes"]["unsharded"]["series_bytes"], 3),
                # hidden: the added latency is within 10% of a layer's compute
                "hides": added <= 0.10 * base,
                # compute per layer between uses that would hide the broadcast (P >= 1)
                "compute_needed_ms": round(bcast_ms / p, 3) if p else None,
            }
        out.append(s)
    return out


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return my - b * mx, b


def break_even(summary: list[dict]) -> dict:
    """Lines through (layer bytes, broadcast ms) and (layer bytes, compute ms per layer);
    per P >= 1 the layer size above which P layers of compute outlast one broadcast (None:
    never, in the measured regime: the broadcast grows faster than the compute)."""
    xs = [s["layer_bytes"] for s in summary]
    if len(xs) < 2:
        return {}
    a, b = _fit(xs, [s["broadcast_ms"] for s in summary])
    c, d = _fit(xs, [s["unsharded_ms_per_layer"] for s in summary])
    out = {"broadcast_ms": {"a": round(a, 4), "b_ms_per_mib": round(b * 2**20, 4)},
           "compute_ms": {"a": round(c, 4), "b_ms_per_mib": round(d * 2**20, 4)}}
    for p in (1, 2):
        # hidden at size S when a + b S <= p (c + d S), i.e. g(S) = (a - p c) + (b - p d) S <= 0
        g0, slope = a - p * c, b - p * d
        if slope < 0:  # compute grows faster: hides from some size up
            out[f"P{p}"] = {"hides_from_bytes": max(0, round(-g0 / slope))}
        elif slope > 0:  # the broadcast grows faster: hides only below some size, if at all
            out[f"P{p}"] = {"hides_below_bytes": round(-g0 / slope) if g0 < 0 else None}
        else:
            out[f"P{p}"] = {"hides_everywhere": g0 <= 0}
    return out


def run(args) -> int:
    import torch.multiprocessing as mp
    import vllm

    import vllm_ascend

    out = Path(args.out) if args.out else RESULTS_DIR / "shared_weight.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine, t0 = machine_info(), time.perf_counter()
    cfg = {"sizes": args.sizes, "layers": args.layers, "tokens": args.tokens,
           "repeats": args.repeats, "warmup": args.warmup, "modes": list(MODES)}
    _log(f"2 ranks (gloo), {args.layers} blocks, {args.tokens} tokens, sizes "
         f"{', '.join(f'{k}x{n}' for k, n in args.sizes)}, modes {', '.join(MODES)}")
    tmp = str(out.with_suffix(".rank"))
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, cfg, tmp)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    ranks = []
    for r in range(2):
        with open(f"{tmp}.{r}") as f:
            ranks.append(json.load(f))
        os.remove(f"{tmp}.{r}")
    errors = [f"rank {r}: {x['error']}" for r, x in enumerate(ranks) if "error" in x]
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    summary = summarize(ranks[0]["sizes"])
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "benchmark": "shared-weight",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "vllm_version": vllm.__version__, "plugin_version": vllm_ascend.__version__,
        "plugin_commit": git_commit(), "machine": machine, "config": cfg,
        "primary_metric": "added_ms_per_layer", "higher_is_better": False,
        "total_runtime_s": round(time.perf_counter() - t0, 1),
        "summary": summary, "break_even": break_even(summary), "results": ranks[0]["sizes"], "rank1_results": ranks[1]["sizes"],
        "fingerprint": fingerprint(config_from_args(args)),
    }
    out.write_text(json.dumps(doc) + "\n")
    print(f"{'size':>12} {'MiB':>7} {'GB/s':>6} {'bcast':>7} {'base':>7} "
          + " ".join(f"{m + ' +ms':>9} {'wait':>6}" for m in MODES[1:]) + "  hides(P1)")
    for s in summary:
        cells = " ".join(f"{s['modes'][m]['added_ms_per_layer']:>9.2f} "
                         f"{s['modes'][m]['wait_ms_per_layer']:>6.2f}" for m in MODES[1:])
        print(f"{s['k']:>6}x{s['n']:<5} {s['layer_bytes'] / 2**20:>7.1f} "
              f"{s['bandwidth_gbps_p50']:>6.2f} {s['broadcast_ms']:>7.2f} "
              f"{s['unsharded_ms_per_layer']:>7.2f} {cells}  {s['modes']['P1']['hides']}")
    print("ms per layer (p50); +ms: added vs unsharded; wait: blocked in the ring's wait; "
          "bcast: one layer's blocking broadcast; base: unsharded compute per layer")
    print(f"break-even (linear fits over the sizes): {json.dumps(doc['break_even'])}")
    print(f"wrote {out} ({doc['total_runtime_s']:.0f} s)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("shared-weight", help="shared-weight layers: added latency per layer "
                       "(prefetch_step 0/1/2 vs unsharded), broadcast bandwidth",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", help="result JSON (default: bench/results/shared_weight.json)")
    p.add_argument("--sizes", type=_sizes, default=_sizes(DEFAULT_SIZES),
                   help=f"KxN o_proj sizes, int8 (default {DEFAULT_SIZES}; DeepSeek-V3's "
                   "o_proj is 16384x7168)")
    p.add_argument("--layers", type=int, default=4, help="blocks in the stack (4)")
    p.add_argument("--tokens", type=int, default=16, help="tokens per pass (16: decode)")
    p.add_argument("--repeats", type=int, default=7, help="timed passes per mode (7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first (2)")
    p.set_defaults(run=run)
