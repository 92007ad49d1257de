"""Per-operator microbenchmarks of the reference backend and its csrc kernels (pytest-benchmark).

Run through ``bench ops`` (or ``bench run ops``), which converts pytest-benchmark's JSON into a
bench result file; ``pytest bench/ops`` works too. Not under tests/ut: ``pytest tests/ut``
must not time anything. Each benchmark names its ``op``, ``shape`` and ``variant`` in
``benchmark.extra_info``: those are the result's configuration for ``bench compare``.

Shapes are small MoE-decode ones (a 2-core box runs the whole file in well under a minute):
E experts, hidden H, per-expert N; T tokens routed top-k, so M = T * k rows.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from vllm_ascend.device import ops
from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import matmul as mm

needs_native = pytest.mark.skipif(not ck.native_available(), reason="vllm_ascend._C not built")
needs_int8 = pytest.mark.skipif(not ck.onednn_available(),
                                reason="oneDNN int8 GEMM not exact here (no VNNI/AMX)")

E, H, N, TOP_K = 16, 512, 512, 4
TOKENS = (1, 16)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextmanager
def _path(variant: str):
    """``kernel``: the fast paths as shipped; ``reference``: every fast path off (the oracle)."""
    saved = ck.force_exact
    ck.force_exact = variant == "reference"
    try:
        yield
    finally:
        ck.force_exact = saved


def _tag(benchmark, op: str, shape: str, variant: str) -> None:
    benchmark.extra_info.update(op=op, shape=shape, variant=variant)


def _groups(tokens: int) -> torch.Tensor:
    """Counts per expert of ``tokens * TOP_K`` rows spread round-robin (group_list_type 1)."""
    rows = tokens * TOP_K
    return torch.tensor([rows // E + (e < rows % E) for e in range(E)], dtype=torch.int64)


# ---------------------------------------------------------------- grouped matmul


@needs_native
@pytest.mark.parametrize("variant", ["kernel", "reference"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("tokens", TOKENS)
def test_grouped_matmul_float(benchmark, tokens, dtype, variant):
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    g = _gen()
    x = torch.randn(tokens * TOP_K, H, generator=g).to(dt)
    w = torch.randn(E, H, N, generator=g).to(dt)
    kw = dict(group_list=_groups(tokens), group_type=0, group_list_type=1, split_item=2)
    _tag(benchmark, "npu_grouped_matmul", f"E{E} M{x.shape[0]} K{H} N{N} {dtype}", variant)
    with _path(variant):
        benchmark(mm.npu_grouped_matmul, [x], [w], **kw)


@needs_native
@needs_int8
@pytest.mark.parametrize("tokens", TOKENS)
def test_grouped_matmul_int8(benchmark, tokens):
    g = _gen()
    x = torch.randint(-127, 128, (tokens * TOP_K, H), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (E, H, N), dtype=torch.int8, generator=g)
    scale = torch.rand(E, N, generator=g) * 0.01
    pertoken = torch.rand(x.shape[0], generator=g)
    kw = dict(scale=[scale], per_token_scale=[pertoken], group_list=_groups(tokens),
              group_type=0, group_list_type=1, split_item=2, output_dtype=torch.float32)
    _tag(benchmark, "npu_grouped_matmul", f"E{E} M{x.shape[0]} K{H} N{N} w8a8", "kernel")
    benchmark(mm.npu_grouped_matmul, [x], [w], **kw)


# W8A8 experts' gate/up at a DeepSeek-V2-Lite-like size: 64 experts, hidden 2048, 2 x 1408,
# top-6 (1 token: 6 rows in 6 groups; 16 tokens: 96 rows in ~50 groups). ``vnni``: csrc's
# grouped_int8 kernel (AVX-512 VNNI, groups <= 48 rows); ``onednn``: oneDNN per expert.
EXPERTS_SHAPE = (64, 2048, 2816)
needs_vnni = pytest.mark.skipif(not torch.cpu._is_vnni_supported(), reason="no AVX-512 VNNI")


@pytest.fixture(scope="module")
def int8_experts() -> torch.Tensor:
    return torch.randint(-127, 128, EXPERTS_SHAPE, dtype=torch.int8, generator=_gen())


INT8_PATHS = [pytest.param("vnni", marks=needs_vnni), "onednn"]


@needs_native
@needs_int8
@pytest.mark.parametrize("variant", INT8_PATHS)
@pytest.mark.parametrize("tokens", (1, 16))
def test_grouped_matmul_int8_experts(benchmark, monkeypatch, int8_experts, tokens, variant):
    from vllm_ascend.device.reference import grouped_matmul as gm

    monkeypatch.setattr(gm, "isa", 2 if variant == "vnni" else 0)
    e, k, n = EXPERTS_SHAPE
    g = _gen(tokens)
    picks = torch.stack([torch.randperm(e, generator=g)[:6] for _ in range(tokens)]).flatten()
    counts = torch.bincount(picks, minlength=e)
    x = torch.randint(-127, 128, (picks.numel(), k), dtype=torch.int8, generator=g)
    kw = dict(scale=[torch.rand(e, n, generator=g) * 0.01],
              per_token_scale=[torch.rand(x.shape[0], generator=g)], group_list=counts,
              group_type=0, group_list_type=1, split_item=2, output_dtype=torch.float32)
    _tag(benchmark, "npu_grouped_matmul", f"E{e} M{x.shape[0]} K{k} N{n} w8a8", variant)
    benchmark(mm.npu_grouped_matmul, [x], [int8_experts], **kw)


@needs_native
@needs_int8
@pytest.mark.parametrize("variant", INT8_PATHS)
@pytest.mark.parametrize("m", (1, 8))
def test_int8_dense_lm_head(benchmark, m, variant):
    """A dense int8 GEMM of SmolLM2's lm_head size (576 x 49152), the exact accumulators:
    ``onednn`` is what the dense W8A8 linears run (``vllm_ascend::onednn_int8_mm``), ``vnni``
    the grouped kernel on it as one group (why the dense linears keep oneDNN)."""
    g = _gen()
    k, n = 576, 49152
    x = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g).t()  # a linear's (k, n)
    _tag(benchmark, "int8_mm", f"M{m} K{k} N{n}", variant)
    if variant == "onednn":
        benchmark(torch.ops.vllm_ascend.onednn_int8_mm, x, w)
    else:
        w3, gl = w.unsqueeze(0).contiguous(), torch.tensor([m])
        benchmark(torch.ops.vllm_ascend.grouped_matmul, x, w3, gl, 1, None, None, None, 0,
                  torch.int32, 2, 48)


# ---------------------------------------------------------------- quantized matmul


@pytest.mark.parametrize("m", (1, 64))
def test_quant_matmul_w8a8(benchmark, m):
    g = _gen()
    k = n = 1024
    x1 = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    x2 = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
    scale = torch.rand(n, generator=g) * 0.01
    pertoken = torch.rand(m, generator=g)
    _tag(benchmark, "npu_quant_matmul", f"M{m} K{k} N{n} pertoken fp32", "kernel")
    benchmark(ops.npu_quant_matmul, x1, x2, scale, pertoken_scale=pertoken,
              output_dtype=torch.float32)


# ---------------------------------------------------------------- dynamic quant


@pytest.mark.parametrize("rows", (16, 256))
def test_dynamic_quant(benchmark, rows):
    x = torch.randn(rows, 2048, generator=_gen())
    _tag(benchmark, "npu_dynamic_quant", f"{rows}x2048 fp32", "kernel")
    benchmark(ops.npu_dynamic_quant, x)


# ---------------------------------------------------------------- MoE routing / top-k


@pytest.mark.parametrize("tokens", (16, 256))
def test_gating_top_k_softmax(benchmark, tokens):
    x = torch.randn(tokens, 64, generator=_gen())
    _tag(benchmark, "npu_moe_gating_top_k_softmax", f"N{tokens} E64 k6", "kernel")
    benchmark(ops.npu_moe_gating_top_k_softmax, x, k=6)


@pytest.mark.parametrize("tokens", (16, 256))
def test_gating_top_k_grouped(benchmark, tokens):
    """DeepSeek-V3 style: sigmoid scores + bias, 8 groups, best 4, top-8, renormalised."""
    g = _gen()
    x = torch.randn(tokens, 256, generator=g)
    bias = torch.randn(256, generator=g) * 0.1
    _tag(benchmark, "npu_moe_gating_top_k", f"N{tokens} E256 k8 G8 kg4 sigmoid", "kernel")
    benchmark(ops.npu_moe_gating_top_k, x, 8, bias=bias, k_group=4, group_count=8,
              group_select_mode=1, norm_type=1, routed_scaling_factor=2.5)


@pytest.mark.parametrize("tokens", (16, 256))
def test_init_routing_v2(benchmark, tokens):
    g = _gen()
    x = torch.randn(tokens, H, generator=g)
    idx = torch.stack([torch.randperm(E, generator=g)[:TOP_K] for _ in range(tokens)]).int()
    _tag(benchmark, "npu_moe_init_routing_v2", f"N{tokens} H{H} E{E} k{TOP_K}", "kernel")
    benchmark(ops.npu_moe_init_routing_v2, x, idx, active_num=tokens * TOP_K, expert_num=E,
              expert_tokens_num_type=1, expert_tokens_num_flag=True)


# ---------------------------------------------------------------- volatile weight


@needs_int8
@pytest.mark.parametrize("variant", ["prepacked", "as-stored", "rebuilt"])
def test_int8_mm_volatile_weight(benchmark, monkeypatch, variant):
    """A weight rewritten before every use (a shared-weight ring buffer), 16 MiB int8
    (4096 x 4096), 16 rows: ``prepacked`` a weight that never changes (oneDNN handle reused);
    ``as-stored`` the same weight marked volatile (``torch._int_mm``, no prepack);
    ``rebuilt`` rewritten before each call but not marked (a new oneDNN handle per call)."""
    import weakref

    monkeypatch.setattr(ck, "_volatile", weakref.WeakKeyDictionary())
    monkeypatch.setattr(ck, "_any_volatile", False)
    g = _gen()
    a = torch.randint(-127, 128, (16, 4096), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (4096, 4096), dtype=torch.int8, generator=g)
    if variant == "as-stored":
        ck.mark_volatile(w)

    def call():
        if variant != "prepacked":
            torch.autograd.graph.increment_version(w)  # what a broadcast into the ring does
        return ck.int8_mm(a, w)

    _tag(benchmark, "int8_mm", "M16 K4096 N4096", variant)
    benchmark(call)
