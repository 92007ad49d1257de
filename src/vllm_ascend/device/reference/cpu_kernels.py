"""Fast CPU paths of the reference quantised ops: real int8 / int4 GEMMs, same numerics.

The reference ops (``quant.py``, ``matmul.py``) define the math in plain PyTorch. On a CPU
that math is far too slow to serve a quantised model (integer matmuls run through float64,
int4 weights are unpacked with int64 shifts on every call), so the ops ask this module
first; it returns ``None`` whenever its kernels do not apply and the op then runs its plain
path. This is the only module that calls low-bit GEMM kernels:

======================  =====================================================================
``int8_mm``             int8 x int8 -> the exact accumulators: vLLM's oneDNN int8 GEMM
                        where that is exact, called from C++ (``vllm_ascend::onednn_int8_mm``,
                        csrc/onednn_int8.cpp: ``torch.ops._C.create_onednn_scaled_mm_handler``
                        / ``onednn_scaled_mm`` through the dispatcher, K in chunks of 1023 so
                        each fp32 partial is exact), else ``i8_matmul`` (csrc/, AVX2
                        ``vpmaddwd``). Used by ``npu_quant_matmul`` (W8A8 static and dynamic);
                        the op applies its own epilogue (bias, scales, cast) to them, so every
                        output is bit-identical to the plain path.
``weight_quant_mm``     float x @ int8 / packed-int4 weight with per-tensor / per-channel /
                        per-group scale and offset: ``vllm_ascend::wq_matmul`` (csrc/, AVX2 and
                        AVX-512 paths) reads the weight at 1 or 0.5 byte per value. Used by
                        ``npu_weight_quant_batchmatmul`` (W8A16, W4A16).
                        Same W as the plain path, fp32 sums in another order (fp32 tolerance).
``a8w4_mm``             int8 x packed-int4 (A8W4) of ``npu_grouped_matmul`` (``_a8w4``; the
                        W4A8_DYNAMIC linear layers and experts): ``vllm_ascend::a8w4_mm_cached``
                        (csrc/a8w4_kernels.cpp, ``vpdpbusd`` / AVX2) reads 0.5 byte per weight.
                        Exact int32 group sums, then fp32 group accumulation (fp32 tolerance).
``dynamic_quant``       ``vllm_ascend::dynamic_quant_int8``: ``npu_dynamic_quant`` to int8
                        without smooth scales, bit-identical (IEEE division, half-to-even).
======================  =====================================================================

Exactness of oneDNN's int8 GEMM: on x86 without VNNI (plain AVX2, AVX-512 without VNNI)
oneDNN multiplies pairs of u8 x s8 into int16 with saturation (``vpmaddubsw``), which breaks
exact accumulation for weights beyond +-64; ``int8_mm`` therefore uses oneDNN only where it
runs on VNNI / AMX (``torch.cpu._is_vnni_supported()``, AVX-VNNI or AMX, and no
``ONEDNN_MAX_CPU_ISA`` below that) and csrc's exact ``i8_matmul`` elsewhere.

Prepacked weights (and scale tables) are derived lazily, on the first call with a given
tensor, and cached per tensor: keyed weakly on its storage, valid while the tensor's data
pointer, shape, strides and version counter (in-place writes) are unchanged, else rebuilt.
oneDNN handles and A8W4 packs live in C++ caches (csrc/tensor_cache.h), so a compiled graph
calls those GEMMs as single C++ ops; i8_matmul and wq_matmul packs live in Python
(``_DerivedCache``) behind ``vllm_ascend::ref_*`` custom ops. The oneDNN handle bakes in no
scale (unit scales; the op scales the exact accumulators itself), so a new ``scale`` tensor
needs no new handle. :func:`builds` counts the builds (tests check hits and invalidation).

Volatile weights (:func:`mark_volatile`: rewritten before every use, e.g. the shared-weight
ring buffers) are never prepacked, since a rebuild per use costs far more than the GEMM
(``bench ops -k volatile``): ``int8_mm`` multiplies them as stored with ``torch._int_mm``
(exact int32). The other cached kernels (wq_matmul, A8W4) still rebuild for them.

Without the compiled ``vllm_ascend._C`` (``setup.py``; not built, not x86, no AVX2) every
function here returns None and the ops run their plain PyTorch math.
``VLLM_ASCEND_REFERENCE_EXACT=1`` (read at import) or :data:`force_exact` turns every fast
path off.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable

import torch

from vllm_ascend.device.reference._common import decode_quant_param, int_weight

#: Environment variable: "1" makes every reference op take its plain PyTorch path.
EXACT_ENV = "VLLM_ASCEND_REFERENCE_EXACT"
#: When True the fast paths are off (all return None). Read from EXACT_ENV at import.
force_exact: bool = os.environ.get(EXACT_ENV, "").strip().lower() in ("1", "true", "yes")
#: wq_matmul's AVX-512 path (when the CPU has it); False forces the AVX2 path (tests).
use_avx512: bool = True
#: Above this many rows ``weight_quant_mm`` dequantises the weight to fp32 once per call (a
#: transient tensor, never cached) and uses torch's fp32 GEMM (long prefills); up to it the
#: row-tiled kernel, which reads the packed weight once per 8 rows, is faster (measured on
#: SmolLM2's shapes).
WQ_MAX_KERNEL_ROWS = 256

#: int8_mm uses oneDNN when it is exact here, else csrc's i8_matmul; False forces the latter.
prefer_onednn: bool = True
#: Highest path a8w4_matmul may take (it falls back to what the CPU has): 2 AVX-512 VNNI,
#: 1 AVX-VNNI, 0 AVX2 (tests force the lower paths).
a8w4_isa: int = 2

#: Builds per kind of the Python caches (prepacked weights, scale tables); see builds().
stats: dict[str, int] = {"i8_weights": 0, "wq_weights": 0, "wq_params": 0}


def builds(kind: str) -> int:
    """Prepared weights / tables so far of ``kind``: a :data:`stats` key, or one of the C++
    caches' ``onednn_weights``, ``a8w4_weights``, ``a8w4_params`` (0 without vllm_ascend._C)."""
    if kind in stats:
        return stats[kind]
    if not native_available():
        return 0
    if kind == "onednn_weights":
        return int(torch.ops.vllm_ascend.onednn_int8_cache(False))
    return int(torch.ops.vllm_ascend.a8w4_cache(False)[("a8w4_weights", "a8w4_params").index(kind)])


_BLOCK_N = 16


# ------------------------------------------------------------------ availability


# Probed once, on first use (never at import: importing vLLM's kernels resolves vLLM's
# platform, which may be what is importing this module). Plain globals, so that code traced
# by dynamo reads constants; the probes themselves are never traced.
_native: bool | None = None
_onednn: bool | None = None


@torch.compiler.disable
def _probe_native() -> bool:
    try:
        from vllm_ascend.native import load_extension

        if not torch.cpu._is_avx2_supported() or not load_extension():
            return False
        ns = torch.ops.vllm_ascend
        return all(hasattr(ns, op) for op in ("wq_matmul", "wq_dequant", "dynamic_quant_int8",
                                              "i8_matmul", "a8w4_matmul", "a8w4_pack",
                                              "a8w4_mm_cached", "onednn_int8_mm",
                                              "add_rms_norm_quant", "swiglu_dynamic_quant",
                                              "rms_norm", "add_rms_norm",
                                              "grouped_swiglu_mlp", "swiglu_moe"))
    except (OSError, RuntimeError, ImportError, AttributeError):
        return False


def native_available() -> bool:
    """``vllm_ascend._C`` (csrc/) is built and loaded into ``torch.ops.vllm_ascend``."""
    global _native
    if _native is None:
        _native = _probe_native()
    return _native


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onednn_int8_exact() -> bool:
    """oneDNN's s8 x s8 matmul accumulates exactly in int32 here (VNNI or AMX in use)."""
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "")
    limit = limit.strip().upper()
    if limit and limit not in ("ALL", "DEFAULT") and not any(
            tag in limit for tag in ("VNNI", "BF16", "FP16", "AMX", "AVX10")):
        return False
    try:
        if torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported():
            return True
    except AttributeError:
        pass
    return "avx_vnni" in _cpu_flags()


@torch.compiler.disable
def _probe_onednn() -> bool:
    try:
        import vllm._custom_ops  # noqa: F401  (loads vLLM's CPU kernels into torch.ops._C)
    except Exception:  # vLLM absent, or a build that fails to import here
        return False
    c = getattr(torch.ops, "_C", None)
    try:
        if c is None or not all(hasattr(c, op) for op in (
                "create_onednn_scaled_mm_handler", "onednn_scaled_mm")):
            return False
    except RuntimeError:
        return False
    return _onednn_int8_exact()


def onednn_available() -> bool:
    """vLLM's oneDNN int8 GEMM is importable and exact on this CPU."""
    global _onednn
    if _onednn is None:
        _onednn = _probe_onednn()
    return _onednn


def describe() -> dict[str, Any]:
    """Which fast paths are live in this process (for logs and the benchmark)."""
    return {"force_exact": force_exact, "onednn_int8": onednn_available(),
            "native": native_available(), "int8_mm": _int8_backend(1),
            "avx512": bool(torch.cpu._is_avx512_supported()) and use_avx512}


# ------------------------------------------------------------------ per-tensor caches


class _DerivedCache:
    """Data derived from a tensor, keyed weakly on its storage; an entry is reused while the
    tensor's (data_ptr, shape, strides, dtype, tag) and version counter are unchanged (an
    inference tensor has no version counter: an in-place write to it inside
    ``torch.inference_mode`` is not seen)."""

    def __init__(self) -> None:
        self._map: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, t: torch.Tensor, tag: tuple, build: Callable[[], Any]) -> Any:
        storage = t.untyped_storage()
        key = (tag, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        # Inference tensors (made under torch.inference_mode, as in vLLM's forward) have no
        # version counter: their entries are kept until the storage dies.
        version = -1 if t.is_inference() else t._version
        entries = self._map.get(storage)
        if entries is not None:
            hit = entries.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
        value = build()
        with self._lock:
            entries = self._map.setdefault(storage, {})
            # A rebuilt view replaces its stale entry; other views of the storage stay.
            entries[key] = (version, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._map = weakref.WeakKeyDictionary()


_weights = _DerivedCache()
_params = _DerivedCache()


def clear_caches() -> None:
    """Forget every prepacked weight and scale table (tests)."""
    _weights.clear()
    _params.clear()


# ------------------------------------------------------------------ int8 x int8 (oneDNN)


#: K rows per oneDNN call: every partial accumulator stays below 2**24 (1023 * 128 * 128), so
#: its fp32 result is the exact integer; longer K sums the exact chunks in float64.
_K_CHUNK = 1023


def _pack_int8_pairs(b: torch.Tensor) -> torch.Tensor:
    """int8 (k, n) -> i8_matmul's layout: int8 (ceil(n/16), ceil(k/2), 16, 2), zero-padded."""
    k, n = b.shape
    k2, blocks = -(-k // 2), -(-n // _BLOCK_N)
    padded = b.new_zeros(2 * k2, blocks * _BLOCK_N)
    padded[:k, :n] = b
    stats["i8_weights"] += 1
    return padded.reshape(k2, 2, blocks, _BLOCK_N).permute(2, 0, 3, 1).contiguous()


def _int8_backend(k: int) -> str | None:
    """oneDNN (through csrc's onednn_int8_mm) when exact here and preferred, else csrc's
    i8_matmul, else None; both need vllm_ascend._C."""
    if not native_available():
        return None
    if prefer_onednn and onednn_available():
        return "onednn"
    if k < 2**17:
        return "native"
    return "onednn" if onednn_available() else None


def _int8_mm_impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """csrc's i8_matmul on the pair-packed weight (cached in Python)."""
    k, n = b.shape
    packed = _weights.get(b, ("i8",), lambda: _pack_int8_pairs(b))
    acc = torch.ops.vllm_ascend.i8_matmul(a, packed, n)
    return acc.to(torch.float32 if k <= _K_CHUNK else torch.float64)


@torch.library.custom_op("vllm_ascend::ref_int8_mm", mutates_args=(), device_types="cpu")
def _int8_mm_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _int8_mm_impl(a, b)


@_int8_mm_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype = torch.float32 if b.shape[0] <= _K_CHUNK else torch.float64
    return a.new_empty((a.shape[0], b.shape[1]), dtype=dtype)


# Storages of volatile weights (mark_volatile). A plain global flag guards the lookup, so
# the decode path pays nothing while no tensor is volatile.
_volatile: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_any_volatile: bool = False


def mark_volatile(*tensors: torch.Tensor) -> None:
    """Declare ``tensors`` rewritten between uses: no fast path caches data derived from
    them (int8_mm multiplies them as stored). Keyed on their storages (views included)."""
    global _any_volatile
    for t in tensors:
        _volatile[t.untyped_storage()] = None
    _any_volatile = bool(tensors) or _any_volatile


def is_volatile(t: torch.Tensor) -> bool:
    return _any_volatile and t.untyped_storage() in _volatile


def _int8_mm_as_stored(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (m, k) @ b (k, n)`` int8 with no prepacked form: torch's exact int32 GEMM on b as
    stored (a contiguous (k, n) is its fast layout), as int8_mm's fp32 / float64."""
    acc = torch._int_mm(a, b if b.is_contiguous() else b.contiguous())
    return acc.to(torch.float32 if b.shape[0] <= _K_CHUNK else torch.float64)


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """The exact integer accumulators of ``a (..., m, k) @ b (k, n)`` (int8 tensors, ``b``
    a 2-D weight of any strides) as ``(..., m, n)``: fp32 for ``k <= 1023`` (every value
    below 2**24, so exact), float64 beyond (like the reference's own accumulator). None when
    the fast path does not apply.
    """
    if force_exact or a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() < 2 \
            or b.dim() != 2 or not a.is_cpu or not b.is_cpu:
        return None
    k, n = b.shape
    if a.shape[-1] != k or k == 0 or n == 0 or a.numel() == 0:
        return None
    if _any_volatile and k < 2**17 and not torch.compiler.is_compiling() \
            and b.untyped_storage() in _volatile:
        fn = _int8_mm_as_stored
    elif (backend := _int8_backend(k)) is None:
        return None
    elif backend == "onednn":
        # csrc/onednn_int8.cpp: vLLM's oneDNN GEMM with the prepacked weight cached in C++,
        # so a compiled graph calls one C++ op (no Python per GEMM).
        fn = torch.ops.vllm_ascend.onednn_int8_mm
    else:
        fn = _int8_mm_op if torch.compiler.is_compiling() else _int8_mm_impl
    if a.dim() == 2:  # (reshapes cost microseconds: the decode path avoids them)
        return fn(a if a.is_contiguous() else a.contiguous(), b)
    return fn(a.reshape(-1, k).contiguous(), b).reshape(*a.shape[:-1], n)


# ------------------------------------------------------------------ weight-only quantised


def _pack_weight(weight: torch.Tensor, k: int, n: int, bits: int) -> torch.Tensor:
    """int8 (k, n) or packed int4 weight -> wq_matmul's layout, uint8 (ceil(n/16), k, 16 or 8)."""
    values = int_weight(weight, k, "weight")  # int8 values (k, n), the reference's unpack
    blocks = -(-n // _BLOCK_N)
    padded = values.new_zeros(k, blocks * _BLOCK_N)
    padded[:, :n] = values
    padded = padded.reshape(k, blocks, _BLOCK_N).permute(1, 0, 2)
    if bits == 8:
        packed = padded.contiguous().view(torch.uint8)
    else:
        lo = padded[..., :8].to(torch.int16) & 0xF
        hi = (padded[..., 8:].to(torch.int16) & 0xF) << 4
        packed = (lo | hi).to(torch.uint8).contiguous()
    stats["wq_weights"] += 1
    return packed


def _param_table(p: torch.Tensor, n: int, group_size: int) -> torch.Tensor:
    """Antiquant scale/offset -> fp32 (groups, ceil(n/16)*16), zero-padded columns."""
    v = decode_quant_param(p) if p.dtype == torch.int64 else p.float()
    v = v if group_size > 0 else v.reshape(1, -1).expand(1, n)
    table = torch.zeros(v.shape[0], -(-n // _BLOCK_N) * _BLOCK_N, dtype=torch.float32)
    table[:, :n] = v
    stats["wq_params"] += 1
    return table


def _param_ok(p: torch.Tensor | None, k: int, n: int, group_size: int) -> bool:
    """The shapes the reference's ``_antiquant_param`` accepts (others: its error path)."""
    if p is None:
        return True
    if not (p.is_floating_point() or p.dtype == torch.int64) or not p.is_cpu:
        return False
    if group_size > 0:
        return tuple(p.shape) == (-(-k // group_size), n)
    return p.dim() <= 2 and (p.numel() == 1 or (p.numel() == n and p.shape[-1] == n))


def _wq_impl(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
             offset: torch.Tensor | None, group_size: int, n: int, bits: int) -> torch.Tensor:
    k = x.shape[-1]
    group = group_size if group_size > 0 else k
    packed = _weights.get(weight, ("wq", bits, k, n), lambda: _pack_weight(weight, k, n, bits))
    tag = ("wq", n, group_size)
    s = _params.get(scale, tag, lambda: _param_table(scale, n, group_size))
    o = None if offset is None else _params.get(offset, tag,
                                                lambda: _param_table(offset, n, group_size))
    xf = x.float()
    if xf.stride(-1) != 1:
        xf = xf.contiguous()
    if x.shape[0] > WQ_MAX_KERNEL_ROWS:
        return xf @ torch.ops.vllm_ascend.wq_dequant(packed, s, o, bits, group, n)
    return torch.ops.vllm_ascend.wq_matmul(xf, packed, s, o, bits, group, n, use_avx512)


@torch.library.custom_op("vllm_ascend::ref_wq_mm", mutates_args=(), device_types="cpu")
def _wq_op(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
           offset: torch.Tensor | None, group_size: int, n: int, bits: int) -> torch.Tensor:
    return _wq_impl(x, weight, scale, offset, group_size, n, bits)


@_wq_op.register_fake
def _(x, weight, scale, offset, group_size, n, bits):
    return x.new_empty((x.shape[0], n), dtype=torch.float32)


def weight_quant_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                    offset: torch.Tensor | None, group_size: int) -> torch.Tensor | None:
    """fp32 ``x (..., m, k) @ W`` with ``W = (w + offset) * scale`` as the reference's
    ``npu_weight_quant_batchmatmul`` forms it (before bias / requantisation).

    weight: int8 (k, n) (any strides) or int32-packed int4 (k, n/8) or a transposed view of
    (n, k/8); scale/offset: (1,), (n,), (1, n), or (ceil(k/G), n) for ``group_size=G > 0``;
    fp32/bf16/fp16 or int64 quant params. None when the fast path does not apply (including
    every input the reference rejects: it then raises its own error).
    """
    if force_exact or scale is None or not x.is_floating_point() or x.dim() < 2 \
            or weight.dim() != 2 or not x.is_cpu or not weight.is_cpu:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        return None
    k = x.shape[-1]
    if weight.dtype == torch.int8 and weight.shape[0] == k:
        n, bits = weight.shape[1], 8
    elif weight.dtype == torch.int32 and weight.shape[0] == k:
        n, bits = weight.shape[1] * 8, 4
    elif weight.dtype == torch.int32 and weight.shape[0] * 8 == k:
        n, bits = weight.shape[1], 4
    else:
        return None
    if k == 0 or n == 0 or x.numel() == 0:
        return None
    if not (_param_ok(scale, k, n, group_size) and _param_ok(offset, k, n, group_size)):
        return None
    if not native_available():
        return None
    fn = _wq_op if torch.compiler.is_compiling() else _wq_impl
    if x.dim() == 2:
        return fn(x, weight, scale, offset, group_size, n, bits)
    return fn(x.reshape(-1, k), weight, scale, offset, group_size, n,
              bits).reshape(*x.shape[:-1], n)


# ------------------------------------------------------------------ A8W4 (int8 x int4)


def a8w4_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """fp32 ``(m, n)`` A8W4 product ``sum_g float(acc_g) * scale[g]``, exact group sums
    ``acc_g = sum_{k in g} (x[:, k] - 8) * w[k]`` (``matmul._a8w4`` before bias / per-token
    scale). x int8 (m, k); weight int32-packed int4 (k, n/8) or a transposed view of
    (n, k/8); scale (G, n) (G > 1 groups of k/G rows) or (n,)/(1, n)/(1,), float or int64
    quant params. None when the fast path does not apply: every form the reference rejects,
    groups of a size not a multiple of 4, and a weight that is not a contiguous (k, n/8)
    tensor (npu_convert_weight_to_int4pack's output, which the schemes keep). csrc's
    ``a8w4_mm_cached`` packs the weight and the scale table once per tensor, in C++."""
    if force_exact or x.dtype != torch.int8 or weight.dtype != torch.int32 or x.dim() != 2 \
            or weight.dim() != 2 or not (x.is_cpu and weight.is_cpu and scale.is_cpu):
        return None
    m, k = x.shape
    if k != weight.shape[0] or not weight.is_contiguous() or m == 0 or k == 0 \
            or not (scale.is_floating_point() or scale.dtype == torch.int64):
        return None
    n = weight.shape[1] * 8
    if scale.dim() == 2 and scale.shape[0] > 1:  # per group: (G, n) with G dividing k
        groups = scale.shape[0] if scale.shape[1] == n and k % scale.shape[0] == 0 else 0
    else:  # one group: (n,), (1, n) or (1,)
        groups = int(scale.dim() <= 2 and (scale.numel() == 1 or scale.numel() == n)
                     and (scale.dim() < 2 or scale.shape[0] == 1))
    if not groups or n == 0 or (k // groups) % 4 or k // groups >= 2**20 \
            or not native_available():
        return None
    return torch.ops.vllm_ascend.a8w4_mm_cached(x, weight, scale, k // groups, a8w4_isa)


# ------------------------------------------------------------------ dynamic quantisation


def dynamic_quant(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``npu_dynamic_quant(input)`` to int8 without smooth scales -> (y int8 (..., H),
    scale fp32 (...,)), bit-identical to the plain path; None when not applicable."""
    if force_exact or input.dtype not in (torch.float32, torch.bfloat16, torch.float16) \
            or input.dim() < 1 or not input.is_cpu:
        return None
    h = input.shape[-1]
    if h == 0 or input.numel() == 0 or not native_available():
        return None
    if input.dim() == 2:
        return torch.ops.vllm_ascend.dynamic_quant_int8(
            input if input.is_contiguous() else input.contiguous())
    y, scale = torch.ops.vllm_ascend.dynamic_quant_int8(input.reshape(-1, h).contiguous())
    return y.reshape(input.shape), scale.reshape(input.shape[:-1])
