"""The quantizer's math: fp32 weights -> the checkpoint tensors each scheme loads.

Pure torch (no vLLM, no I/O). Every function takes the float weight of one linear layer
``w (N, K)`` (any float dtype; computed in float64) and returns ``{suffix: tensor}`` with the
suffixes, shapes and dtypes of docs/quantization.md. Rounding is ``torch.round`` (half to
even); a quantized value ``q`` and its stored fp32 scale ``s`` satisfy
``|w - q * s| <= s / 2`` element-wise (up to fp32 rounding of ``s``), except where ``q`` is
clamped (only possible within a hair of the range edge).

- int8 per channel (W8A8, W8A8_DYNAMIC, W8A16, experts): ``s = max_k |w[n, k]| / 127``,
  ``q = round(w / s)`` in [-127, 127];
- int4 per group (W4A8_DYNAMIC): ModelSlim's two levels, ``s_c[n] = max_k |w[n, k]| / 127``
  (the int8 channel scale) and ``s_g[n, g] = max_{k in g} |w[n, k]| / (7 s_c[n])``; the
  weight is quantized with their fp32 product ``s = s_c * s_g`` (what the scheme
  multiplies), ``q = round(w / s)`` in [-8, 7];
- int4 per channel / group (W4A16, FlatQuant): ``s = max |w| / 7``.

A zero row or group gets scale 1 (its values are 0 either way): schemes reject zero scales.
"""

from __future__ import annotations

import torch

from vllm_ascend.quantization.methods._int4 import pack_int4_pairs

INT8_MAX, INT4_MAX, INT4_MIN = 127, 7, -8
#: Row-parallel W4A8_DYNAMIC layers (1.0.0) store scale_bias as 16 partial sums over K.
SCALE_BIAS_CHUNKS = 16


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def symmetric(w: torch.Tensor, qmax: int, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of ``w (..., N, K)`` -> (int8 values, fp32 scale
    ``(..., N, 1)`` or ``(..., N, K / group)``); ``qmax`` 127 (int8) or 7 (int4)."""
    w = w.double()
    *lead, n, k = w.shape
    g = group or k
    if k % g:
        raise ValueError(f"group size {group} does not divide the input size {k}")
    wg = w.reshape(*lead, n, k // g, g)
    scale = _safe((wg.abs().amax(dim=-1) / qmax).float())          # stored fp32
    q = torch.round(wg / scale.double()[..., None]).clamp(-qmax, qmax)
    return q.reshape(*lead, n, k).to(torch.int8), scale


def expand(scale: torch.Tensor, k: int) -> torch.Tensor:
    """Per-group scale ``(..., N, K/G)`` -> per-element ``(..., N, K)`` (float64)."""
    return scale.double().repeat_interleave(k // scale.shape[-1], dim=-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * s`` in float64 (scale per channel or per group)."""
    return q.double() * expand(scale, q.shape[-1])


# ----------------------------------------------------------------------------- int8 schemes

def w8a8_dynamic(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """weight (N, K) int8, weight_scale (N, 1), weight_offset (N, 1) zeros."""
    q, s = symmetric(w, INT8_MAX)
    return {"weight": q, "weight_scale": s, "weight_offset": torch.zeros_like(s)}


def activation_qparams(lo: float, hi: float, symmetric_act: bool) -> tuple[float, float]:
    """Static int8 activation ``(s_x, o_x)`` from the calibrated range ``[lo, hi]``.

    Asymmetric (ModelSlim's default): the range is widened to hold 0, ``s_x = (hi - lo) /
    255``, ``o_x = round(-128 - lo / s_x)`` clamped to [-128, 127], so ``xq = round(x / s_x
    + o_x)`` maps ``lo -> -128`` and ``hi -> 127``. Symmetric: ``s_x = max(|lo|, |hi|) /
    127``, ``o_x = 0``. A range of zero width gives ``s_x = 1``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric_act:
        s_x = float(torch.tensor(max(-lo, hi) / 127, dtype=torch.float32))
        return (s_x if s_x > 0 else 1.0), 0.0
    s_x = float(torch.tensor((hi - lo) / 255, dtype=torch.float32))
    if s_x <= 0:
        return 1.0, 0.0
    o_x = float(min(127.0, max(-128.0, round(-128 - lo / s_x))))
    return s_x, o_x


def w8a8_static(w: torch.Tensor, s_x: float, o_x: float,
                bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """ModelSlim W8A8: the W8A8_DYNAMIC weight tensors plus ``input_scale`` (1,),
    ``input_offset`` (1,), ``deq_scale = s_x * s_w`` (N,) fp32 (computed in fp32) and
    ``quant_bias = round(b / deq_scale) - o_x * sum_k w`` (N,) int32."""
    out = w8a8_dynamic(w)
    q, s_w = out["weight"], out["weight_scale"].reshape(-1)
    deq = torch.tensor(s_x, dtype=torch.float32) * s_w
    folded = torch.zeros(q.shape[0], dtype=torch.float64) if bias is None \
        else torch.round(bias.double() / deq.double())
    quant_bias = folded - o_x * q.to(torch.int64).sum(dim=1).double()
    out.update({
        "input_scale": torch.tensor([s_x], dtype=torch.float32),
        "input_offset": torch.tensor([o_x], dtype=torch.float32),
        "deq_scale": deq,
        "quant_bias": quant_bias.clamp(-2**31, 2**31 - 1).to(torch.int32),
    })
    return out


def weight_only(w: torch.Tensor, bits: int, group: int = 0) -> dict[str, torch.Tensor]:
    """W8A16 / W4A16: symmetric int8 / int4 values (int8 storage), scale (N, 1) or
    (N, K/G), offset zeros of the same shape."""
    q, s = symmetric(w, INT8_MAX if bits == 8 else INT4_MAX, group)
    return {"weight": q, "weight_scale": s, "weight_offset": torch.zeros_like(s)}


# ----------------------------------------------------------------------------- W4A8_DYNAMIC

def w4a8_values(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor,
                                                      torch.Tensor | None]:
    """``w (..., N, K)`` -> (int4 values int8 (..., N, K), s_c fp32 (..., N, 1),
    s_g fp32 (..., N, K/G) or None for G = 0 (then s_c = max |w| / 7))."""
    w = w.double()
    k = w.shape[-1]
    if not group:
        q, s_c = symmetric(w, INT4_MAX)
        return q, s_c, None
    if k % group:
        raise ValueError(f"group size {group} does not divide the input size {k}")
    s_c = _safe((w.abs().amax(dim=-1, keepdim=True) / INT8_MAX).float())
    wg = w.reshape(*w.shape[:-1], k // group, group)
    s_g = _safe((wg.abs().amax(dim=-1) / (INT4_MAX * s_c.double())).float())
    eff = s_c * s_g                                                   # fp32, as the scheme
    q = torch.round(wg / eff.double()[..., None]).clamp(INT4_MIN, INT4_MAX)
    return q.reshape(w.shape).to(torch.int8), s_c, s_g


def effective_scale(s_c: torch.Tensor, s_g: torch.Tensor | None) -> torch.Tensor:
    """fp32 ``s_c * s_g`` (per group), or ``s_c`` (per channel)."""
    return s_c.float() if s_g is None else s_c.float() * s_g.float()


def scale_bias(q: torch.Tensor, scale: torch.Tensor, chunks: int) -> torch.Tensor:
    """The A8W4 bias ``8 * sum_k q[n, k] * s[n, g(k)]`` (..., N, chunks) fp32: one column, or
    partial sums over ``chunks`` consecutive slices of K (row-parallel layers / w2)."""
    terms = 8 * q.double() * expand(scale, q.shape[-1])
    parts = torch.tensor_split(terms, chunks, dim=-1)
    return torch.stack([p.sum(dim=-1) for p in parts], dim=-1).float()


def w4a8_dynamic(w: torch.Tensor, group: int, packed: bool,
                 bias_chunks: int = 1) -> dict[str, torch.Tensor]:
    """ModelSlim W4A8_DYNAMIC tensors of one linear (or one expert projection).

    legacy: ``weight`` (N, K) int8 values; 1.0.0 (``packed``): ``weight`` (N/2, K) int8 pairs
    along N plus ``scale_bias`` (N, bias_chunks). ``weight_scale`` / ``weight_offset``
    (N, 1); for G > 0 ``weight_scale_second`` / ``weight_offset_second`` (N, K/G)."""
    q, s_c, s_g = w4a8_values(w, group)
    out = {"weight": pack_int4_pairs(q, dim=-2) if packed else q,
           "weight_scale": s_c, "weight_offset": torch.zeros_like(s_c)}
    if s_g is not None:
        out["weight_scale_second"] = s_g
        out["weight_offset_second"] = torch.zeros_like(s_g)
    if packed:
        out["scale_bias"] = scale_bias(q, effective_scale(s_c, s_g), bias_chunks)
    return out


# ----------------------------------------------------------------------------- FlatQuant

def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    """A (d, d) fp32 orthogonal matrix, a function of (d, seed) only: Q of the QR of a
    seeded Gaussian matrix, signs fixed so the distribution is uniform (Haar)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + d)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return q.float()


def flatquant_transforms(k: int, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P1 (K1, K1), P2 (K2, K2))`` for an input of size k (the scheme's K1 x K2 split).
    ``kind``: ``"random"`` (random orthogonal, spreads outliers over the row like a
    rotation) or ``"identity"``. Orthogonal factors keep the inverse a transpose."""
    from vllm_ascend.quantization.methods.w4a4_flatquant import kronecker_dims

    k1, k2 = kronecker_dims(k)
    if kind == "identity":
        return torch.eye(k1), torch.eye(k2)
    if kind != "random":
        raise ValueError(f"unknown FlatQuant transform {kind!r}; accepted: random, identity")
    return random_orthogonal(k1, seed), random_orthogonal(k2, seed)


def flatquant_weight(w: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The weight in the transformed basis. The scheme computes ``t = vec(P1^T X P2) = M x``
    with ``M = P1^T (x) P2^T`` (row-major Kronecker); ``y = w x = (w M^-1) t`` and, for
    orthogonal factors, ``w M^-1 = w M^T``: each row ``w[n]`` viewed as (K1, K2) becomes
    ``P1^T W_n P2``. Returns float64 (N, K)."""
    n, k = w.shape
    k1, k2 = left.shape[0], right.shape[0]
    wn = w.double().reshape(n, k1, k2)
    return (left.double().t() @ wn @ right.double()).reshape(n, k)


def w4a4_flatquant(w: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                   clip_ratio: float = 1.0) -> dict[str, torch.Tensor]:
    """weight (N, K) int4 values of the transformed weight, weight_scale / weight_offset
    (N, 1) fp32, left_trans / right_trans fp32, clip_ratio (1,) fp32."""
    q, s = symmetric(flatquant_weight(w, left, right), INT4_MAX)
    return {"weight": q, "weight_scale": s, "weight_offset": torch.zeros_like(s),
            "left_trans": left.float().clone(), "right_trans": right.float().clone(),
            "clip_ratio": torch.tensor([clip_ratio], dtype=torch.float32)}


# ----------------------------------------------------------------------------- dispatch

def quantize_linear(w: torch.Tensor, quant_type: str, *, group: int = 0, packed: bool = True,
                    row_parallel: bool = False, calib: tuple[float, float] | None = None,
                    transforms: tuple[torch.Tensor, torch.Tensor] | None = None,
                    bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The ModelSlim tensors (``{suffix: tensor}``) of one linear layer for ``quant_type``."""
    if quant_type == "W8A8_DYNAMIC":
        return w8a8_dynamic(w)
    if quant_type == "W8A8":
        if calib is None:
            raise ValueError("W8A8 needs calibrated activation parameters")
        return w8a8_static(w, *calib, bias=bias)
    if quant_type == "W8A16":
        return weight_only(w, 8, group)
    if quant_type == "W4A16":
        return weight_only(w, 4, group)
    if quant_type == "W4A8_DYNAMIC":
        return w4a8_dynamic(w, group, packed, SCALE_BIAS_CHUNKS if row_parallel else 1)
    if quant_type == "W4A4_FLATQUANT_DYNAMIC":
        if transforms is None:
            raise ValueError("W4A4_FLATQUANT_DYNAMIC needs the Kronecker transforms")
        return w4a4_flatquant(w, *transforms)
    raise ValueError(f"no linear quantizer for {quant_type!r}")


def quantize_expert(w: torch.Tensor, quant_type: str, *, group: int = 0, packed: bool = True,
                    down: bool = False) -> dict[str, torch.Tensor]:
    """One expert projection (``gate_proj`` / ``up_proj`` (I, H), ``down_proj`` (H, I)).

    1.0.0 W4A8_DYNAMIC: gate/up ``scale_bias`` (I, 1), down ``scale_bias`` (H, 16) partial
    sums over chunks of I (what vLLM's expert loader assembles into ``w13_scale_bias``
    (E, 2I, 1) and ``w2_scale_bias`` (E, H, 16))."""
    if quant_type == "W8A8_DYNAMIC":
        return w8a8_dynamic(w)
    if quant_type == "W4A8_DYNAMIC":
        return w4a8_dynamic(w, group, packed, SCALE_BIAS_CHUNKS if down else 1)
    raise ValueError(f"no expert quantizer for {quant_type!r}")
