"""``bench moe --parts quant``: quantised experts vs the plugin's float experts.

The grouped expert MLP alone (what a scheme's ``apply_experts`` computes, no routing and no
comm): W8A8_DYNAMIC and W4A8_DYNAMIC (the 1.0.0 packed layout; ``group_size`` 256, else 128, else per channel:
the largest that divides hidden and intermediate) built
by the schemes' own ``create_weights`` / ``process_weights_after_loading`` from random int8 /
int4 values, against ``ops.fused_moe.experts.grouped_mlp`` on float32 weights of the same
shape. Rows are ``tokens * top_k`` token copies routed uniformly at random (seeded), sorted
by expert, as dispatch leaves them. One thread (``torch.set_num_threads(1)``), in this
process; each sample is the mean of ``iters`` calls, ``repeats`` samples per case.
``speedup_vs_float`` = float latency / scheme latency (> 1: the scheme is faster). Targets
of issue 11 at 1-16 tokens: W8A8_DYNAMIC >= 1.8x, W4A8_DYNAMIC >= 2.5x.
"""

from __future__ import annotations

import statistics

SCHEMES = ("W8A8_DYNAMIC", "W4A8_DYNAMIC")


def w4a8_group(h: int, i: int) -> int:
    """The W4A8 group size used for a shape: 256, 128 or 0 (per channel)."""
    return next((g for g in (256, 128) if h % g == 0 and i % g == 0), 0)


def _group_list(tokens: int, experts: int, top_k: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)])
    return torch.bincount(ids.reshape(-1), minlength=experts).to(torch.int64)


def _scheme_layer(quant_type: str, e: int, h: int, i: int):
    """(scheme, module) with processed random weights of the scheme's checkpoint layout."""
    import torch

    from vllm_ascend.quantization.methods import get_scheme_class
    from vllm_ascend.quantization.methods._int4 import pack_int4_pairs

    g = torch.Generator().manual_seed(0)
    group = w4a8_group(h, i)
    desc = {} if quant_type == "W8A8_DYNAMIC" else {"group_size": group, "version": "1.0.0"}
    scheme = get_scheme_class(quant_type, "moe")(desc, "bench.mlp.experts")
    layer = torch.nn.Module()
    scheme.create_weights(layer, e, h, i, torch.float32, weight_loader=lambda *a, **k: None)
    tensors = {}
    for stem, (out, inp) in (("w13", (2 * i, h)), ("w2", (h, i))):
        lo, hi = (-127, 127) if quant_type == "W8A8_DYNAMIC" else (-8, 7)
        q = torch.randint(lo, hi + 1, (e, out, inp), generator=g, dtype=torch.int8)
        scale = (torch.rand(e, out, 1, generator=g) + 0.5) * 1e-2
        tensors[f"{stem}_weight_scale"] = scale
        tensors[f"{stem}_weight_offset"] = torch.zeros_like(scale)
        if quant_type == "W8A8_DYNAMIC":
            tensors[f"{stem}_weight"] = q
            continue
        tensors[f"{stem}_weight"] = pack_int4_pairs(q, dim=1)
        eff = scale.double()
        if group:
            second = torch.rand(e, out, inp // group, generator=g) + 0.5
            tensors[f"{stem}_weight_scale_second"] = second
            tensors[f"{stem}_weight_offset_second"] = torch.zeros_like(second)
            eff = eff * second.double().repeat_interleave(group, dim=2)
        terms = 8 * q.double() * eff
        tensors[f"{stem}_scale_bias"] = (
            terms.sum(dim=2, keepdim=True).float() if stem == "w13" else
            torch.stack([c.sum(dim=2) for c in torch.tensor_split(terms, 16, dim=2)],
                        dim=2).float())
    for name, t in tensors.items():
        getattr(layer, name).data.copy_(t)
    scheme.process_weights_after_loading(layer)
    return scheme, layer


def _time(fn, iters: int, repeats: int) -> list[float]:
    import time

    fn()
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t0) / iters * 1e3)
    return out


def run_quant(shapes: dict[str, dict], tokens: list[int], iters: int, repeats: int,
              log) -> tuple[list[dict], dict]:
    """Rows (one per shape x backend x tokens) and ``speedup_vs_float`` ratios."""
    import torch

    from vllm_ascend.ops.fused_moe.experts import grouped_mlp

    torch.set_num_threads(1)
    rows, ratios = [], {}
    for name, s in shapes.items():
        e, h, i, k = s["experts"], s["hidden"], s["intermediate"], s["top_k"]
        g = torch.Generator().manual_seed(1)
        w13 = torch.randn(e, h, 2 * i, generator=g) / h ** 0.5
        w2 = torch.randn(e, i, h, generator=g) / i ** 0.5
        fns = {"float": lambda x, gl: grouped_mlp(x, gl, w13, w2)}
        for q in SCHEMES:
            scheme, layer = _scheme_layer(q, e, h, i)
            fns[q] = (lambda sc, ly: lambda x, gl: sc.apply_experts(ly, x, gl))(scheme, layer)
        for t in tokens:
            gl = _group_list(t, e, k, seed=t)
            x = torch.randn(t * k, h, generator=g)
            ms = {}
            for backend, fn in fns.items():
                samples = _time(lambda: fn(x, gl), iters, repeats)
                ms[backend] = statistics.median(samples)
                rows.append({"part": "quant", "shape": name, "backend": backend, "tokens": t,
                             "rows": t * k, **s, "w4a8_group_size": w4a8_group(h, i), "latency_ms": round(ms[backend], 3),
                             "samples": [round(v, 3) for v in samples]})
                log(f"quant {name} {backend}: {t} tokens: {ms[backend]:.3f} ms")
            for q in SCHEMES:
                ratios[f"quant_{name}_{q}_speedup_vs_float_tokens_{t}"] = \
                    round(ms["float"] / ms[q], 3)
        del w13, w2, fns
    return rows, ratios
