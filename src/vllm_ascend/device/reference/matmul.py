"""Reference ops: quantised and grouped matmuls.

Math: ``shared/reference/torch_npu_ops.md`` ("Quantisation and matmul").

Integer products accumulate exactly, like the device's int32 accumulator: the int8 (or
unpacked int4) operands are multiplied in float64, whose 53-bit mantissa holds every
partial sum while ``K < 2**38`` (each product is at most 2**14 in magnitude). The
dequantisation epilogue then runs in fp32, as on the device.

Choices where the contract leaves room (pinned by ``tests/ut/device/test_matmul_ops.py``):

- ``npu_quant_matmul(output_dtype=torch.int32)`` returns the raw accumulators plus an int32
  bias; ``scale`` is not applied (offset, pertoken_scale or a float bias are rejected).
- An int64 ``scale`` from ``npu_trans_quant_param`` also carries an offset (bits 37-45);
  it is applied when ``offset`` is None (an explicit ``offset`` wins).
- ``offset`` together with ``pertoken_scale``, or with a floating bias: ValueError.
- ``npu_grouped_matmul``: rows past the ``group_list`` total are not computed and stay 0.
  With int8 ``x`` and ``output_dtype=None`` the output is int8 (requantised) when
  ``scale`` is given and the int32 accumulators otherwise.
- ``npu_grouped_matmul`` with int8 ``x`` and a packed int4 (int32) weight (A8W4) models the
  device kernel, which multiplies ``x - 8`` (the two int4 halves of x) and relies on the
  caller's float bias ``8 * sum_k W_deq[k, n]`` to restore ``x @ W_deq`` (the bias
  vllm-ascend's W4A8 MoE passes, the op-plugin A8W4 golden); see ``_a8w4``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_ascend.device.reference import cpu_kernels, grouped_matmul
from vllm_ascend.device.reference._common import as_dtype, saturate_round, unpack_int4
from vllm_ascend.device.reference._common import int_weight as _int_weight
from vllm_ascend.device.reference._common import unpack_kn as _unpack_kn
from vllm_ascend.device.reference.quant import decode_quant_offset, decode_quant_param, group_ends

_FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32)
_OUT_DTYPES = (torch.int8, torch.int32) + _FLOAT_OUT


def _out_dtype(output_dtype, default):
    dtype = as_dtype(output_dtype, arg="output_dtype") or default
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"output_dtype={dtype} is not supported; accepted: "
                         + ", ".join(map(str, _OUT_DTYPES)))
    return dtype


def _exact_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integer ``a @ b`` as exact float64. Every partial sum is an integer of magnitude at
    most ``K * 2**14``: exact in fp32 up to K = 1024 (2**24), in float64 up to K < 2**38."""
    dt = torch.float32 if a.shape[-1] <= 1024 else torch.float64
    return (a.to(dt) @ b.to(dt)).double()


def _vector(p, n: int, arg: str):
    """Per-tensor (1,) or per-channel (n,)/(1, n) parameter -> fp32 (1,) or (n,).
    int64 quant params (npu_trans_quant_param) are decoded."""
    if p is None:
        return None
    v = decode_quant_param(p) if p.dtype == torch.int64 else p.float()
    numel = v.numel()  # (explicit comparisons: dynamo can mis-trace `numel in (1, n)`)
    if v.dim() > 2 or (numel != 1 and numel != n) or (v.dim() == 2 and v.shape[0] != 1):
        raise ValueError(f"{arg} must have shape (1,), ({n},) or (1, {n}), got {tuple(p.shape)}")
    return v.reshape(-1)


def _check_bias(bias, n: int, out_shape) -> None:
    if bias is None:
        return
    if bias.dtype not in (torch.int32,) + _FLOAT_OUT or bias.dim() == 0 or bias.shape[-1] != n:
        raise ValueError(f"bias must be int32/fp16/bf16/fp32 of shape (n={n},) or "
                         f"(batch, 1, {n}), got {bias.dtype} {tuple(bias.shape)}")
    try:
        torch.broadcast_shapes(bias.shape, out_shape)
    except RuntimeError:
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not broadcast to the output "
                         f"{tuple(out_shape)}") from None


def _dequant(acc, *, scale, offset=None, bias=None, pertoken=None):
    """fp32 epilogue on exact accumulators ``acc`` (..., m, n):
    ``(acc + b_int) * scale + offset [+ b_float]`` or, with per-token scales (..., m, 1),
    ``(acc + b_int) * scale * pertoken [+ b_float]``."""
    if bias is not None and not bias.is_floating_point():
        acc, bias = acc + bias.to(torch.float64), None
    y = acc.float() * scale
    if pertoken is not None:
        if offset is not None:
            raise ValueError("offset together with pertoken_scale is not supported (sources "
                             "disagree on the formula); pass one of them")
        y = y * pertoken
    elif offset is not None:
        if bias is not None:
            raise ValueError("offset together with a floating bias is not supported; "
                             "accepted: an int32 bias with offset")
        y = y + offset
    return y if bias is None else y + bias.float()


def _cast_out(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.int8:
        return saturate_round(y, -128, 127).to(torch.int8)
    return y.to(dtype)


def npu_quant_matmul(x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None,
                     output_dtype=None, x1_dtype=None, x2_dtype=None, pertoken_scale_dtype=None,
                     scale_dtype=None, group_sizes=None, y_scale=None):
    """W8A8 matmul with a dequant/requant epilogue.

    x1 (..., m, k) int8 — or int32 (..., m, k/8) packed int4; x2 (..., k, n) int8 (may be
    a transposed view of (n, k)) — or int32 (k, n/8), or a transposed (n, k/8) view.
    scale (1,) or (n,): fp32/bf16, or int64 from ``npu_trans_quant_param``. offset (1,)/(n,);
    pertoken_scale (m,); bias (n,) or (batch, 1, n), int32 (added to the accumulator) or
    float (added after scaling). ``acc = x1 @ x2`` exact, then
    ``(acc + b_int) * scale + offset [+ b_float]``, or with pertoken_scale
    ``(acc + b_int) * scale * pertoken_scale[m] [+ b_float]``.
    output_dtype: None/int8 (round half to even, saturate), fp16, bf16, fp32, or int32
    (raw ``acc + b_int``, scale not applied).
    """
    out_dtype = _out_dtype(output_dtype, torch.int8)
    for name, d in (("x1_dtype", x1_dtype), ("x2_dtype", x2_dtype),
                    ("pertoken_scale_dtype", pertoken_scale_dtype), ("scale_dtype", scale_dtype)):
        as_dtype(d, arg=name)
    if group_sizes is not None or y_scale is not None:
        raise ValueError("group_sizes and y_scale (per-group / mx quantisation) are not "
                         "supported by the reference backend; accepted: None")
    if x1.dim() < 2 or x2.dim() < 2:
        raise ValueError(f"x1 and x2 must be at least 2-d, got {tuple(x1.shape)}, "
                         f"{tuple(x2.shape)}")
    if x1.dtype == torch.int8 and x2.dtype == torch.int8:
        a, b = x1, x2
    elif x1.dtype == torch.int32 and x2.dtype == torch.int32:
        a = unpack_int4(x1)
        b = _unpack_kn(x2, a.shape[-1], "x2")
    else:
        raise ValueError(f"x1/x2 must both be int8 or both int32 (packed int4), got "
                         f"{x1.dtype}, {x2.dtype}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"x2 must be (k, n) with k = x1's last dim {a.shape[-1]}, "
                         f"got {tuple(x2.shape)}")
    m, n = a.shape[-2], b.shape[-1]
    # The same accumulators from a real int8 GEMM when one applies (cpu_kernels.py).
    acc = cpu_kernels.int8_mm(a, b) if x1.dtype == torch.int8 else None
    if acc is None:
        try:
            acc = _exact_mm(a, b)
        except RuntimeError:
            raise ValueError(f"x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} batch dims do "
                             "not broadcast") from None
    _check_bias(bias, n, acc.shape)
    if out_dtype == torch.int32:
        if offset is not None or pertoken_scale is not None or \
                (bias is not None and bias.is_floating_point()):
            raise ValueError("output_dtype=torch.int32 returns raw accumulators; offset, "
                             "pertoken_scale and a float bias are not accepted")
        return (acc if bias is None else acc + bias.to(torch.float64)).to(torch.int32)
    s = _vector(scale, n, "scale")
    off = _vector(offset, n, "offset")
    if off is None and scale.dtype == torch.int64:
        encoded = decode_quant_offset(scale).reshape(-1)
        off = encoded if bool(encoded.any()) else None
    pt = None
    if pertoken_scale is not None:
        pt = pertoken_scale.float()
        if pt.shape == a.shape[:-1]:
            pt = pt.unsqueeze(-1)
        elif pt.dim() == 1 and pt.numel() == m:
            pt = pt.reshape(m, 1)
        else:
            raise ValueError(f"pertoken_scale must have shape (m={m},), got {tuple(pt.shape)}")
    return _cast_out(_dequant(acc, scale=s, offset=off, bias=bias, pertoken=pt), out_dtype)


def _antiquant_param(p, k: int, n: int, group_size: int, arg: str) -> torch.Tensor:
    """Antiquant scale/offset -> fp32 broadcastable to (k, n): (1,) per-tensor, (n,)/(1, n)
    per-channel, (ceil(k/G), n) per-group (row ``i // G`` for weight row i)."""
    v = decode_quant_param(p) if p.dtype == torch.int64 else p.float()
    if group_size > 0:
        groups = -(-k // group_size)
        if tuple(v.shape) != (groups, n):
            raise ValueError(f"{arg} must have shape (ceil(k/G)={groups}, {n}) for group size "
                             f"G={group_size}, got {tuple(p.shape)}")
        return v.repeat_interleave(group_size, dim=0)[:k]
    if v.numel() == 1 and v.dim() <= 2:
        return v.reshape(1, 1)
    if v.numel() == n and v.shape[-1] == n and v.dim() <= 2:
        return v.reshape(1, n)
    raise ValueError(f"{arg} must have shape (1,), ({n},), (1, {n}) or, per group of G rows, "
                     f"(ceil(k/G), {n}); got {tuple(p.shape)}")


def _antiquant(w: torch.Tensor, scale, offset, group_size: int) -> torch.Tensor:
    """``W = (w + offset) * scale`` in fp32, w int8 values (k, n)."""
    k, n = w.shape
    if scale is None:
        raise ValueError("an int8/int4 weight with float x needs antiquant_scale")
    weight = w.float()
    if offset is not None:
        weight = weight + _antiquant_param(offset, k, n, group_size, "antiquant_offset")
    return weight * _antiquant_param(scale, k, n, group_size, "antiquant_scale")


def npu_weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None,
                                 quant_scale=None, quant_offset=None, bias=None,
                                 antiquant_group_size=0, inner_precise=0, weight_dtype=None):
    """W8A16 / W4A16 matmul: ``y = x @ ((weight + antiquant_offset) * antiquant_scale) + bias``.

    x (..., m, k) float; weight (k, n) int8 (may be a transposed view) or int32 (k, n/8)
    packed int4 (or a transposed view of (n, k/8)). antiquant_scale/offset: (1,), (n,),
    (1, n), or (ceil(k/G), n) with ``antiquant_group_size=G``; an int64 scale is decoded.
    bias (n,). With quant_scale (1,)/(n,) (fp32 or int64) and quant_offset the output is
    int8 ``round(y * quant_scale + quant_offset)``; otherwise it has x's dtype.
    """
    as_dtype(weight_dtype, arg="weight_dtype")
    if not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating (m, k) tensor, got {x.dtype} {tuple(x.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-d (k, n), got {tuple(weight.shape)}")
    if isinstance(antiquant_group_size, bool) or not isinstance(antiquant_group_size, int) \
            or antiquant_group_size < 0:
        raise ValueError(f"antiquant_group_size={antiquant_group_size!r}; accepted: 0 "
                         "(per-tensor/per-channel) or a positive group size")
    # The same W read from its 1- or 0.5-byte form by a compiled kernel when one applies.
    y = cpu_kernels.weight_quant_mm(x, weight, antiquant_scale, antiquant_offset,
                                    antiquant_group_size)
    if y is None:
        w = _int_weight(weight, x.shape[-1], "weight")
        y = x.float() @ _antiquant(w, antiquant_scale, antiquant_offset, antiquant_group_size)
    n = y.shape[-1]
    _check_bias(bias, n, y.shape)
    if bias is not None:
        y = y + bias.float()
    if quant_scale is None:
        if quant_offset is not None:
            raise ValueError("quant_offset needs quant_scale")
        return y.to(x.dtype)
    y = y * _vector(quant_scale, n, "quant_scale")
    if quant_offset is not None:
        y = y + _vector(quant_offset, n, "quant_offset")
    return _cast_out(y, torch.int8)


_ACTIVATIONS = {0: None, 1: torch.relu, 2: lambda y: F.gelu(y, approximate="tanh"), 5: F.silu}
_GMM_PARAMS = ("bias", "scale", "offset", "antiquant_scale", "antiquant_offset")


def _gmm_one(x, w, p: dict, pertoken, dtype, act):
    """One group: ``x (m, k) @ w (k, n)`` with the quant epilogue chosen by dtypes/params."""
    k = x.shape[-1]
    if x.dtype == torch.int8 and w.dtype == torch.int32:
        if dtype == torch.int32:
            raise ValueError("A8W4 (int8 x, packed int4 weight) has no raw int32 output; "
                             "accepted output_dtype: int8/fp16/bf16/fp32")
        y = _a8w4(x, w, p, pertoken)
    elif x.dtype == torch.int8:
        if w.dtype != torch.int8 or w.dim() != 2 or w.shape[0] != k:
            raise ValueError(f"int8 x needs an int8 weight (k={k}, n), got {w.dtype} "
                             f"{tuple(w.shape)}")
        n = w.shape[-1]
        acc = _exact_mm(x, w)
        _check_bias(p["bias"], n, acc.shape)
        if p["scale"] is None:
            if dtype != torch.int32 or pertoken is not None or p["offset"] is not None or \
                    act is not None or (p["bias"] is not None and p["bias"].is_floating_point()):
                raise ValueError("int8 x without scale returns raw int32 accumulators: accepted "
                                 "output_dtype None/torch.int32, int32 bias, no "
                                 "per_token_scale/offset/act_type")
            return (acc if p["bias"] is None else acc + p["bias"].double()).to(torch.int32)
        if dtype == torch.int32:
            raise ValueError("output_dtype=torch.int32 with scale; accepted: int8/fp16/bf16/fp32")
        y = _dequant(acc, scale=_vector(p["scale"], n, "scale"),
                     offset=_vector(p["offset"], n, "offset"), bias=p["bias"],
                     pertoken=None if pertoken is None else pertoken.float()[:, None])
    elif x.is_floating_point():
        if p["scale"] is not None or pertoken is not None:
            raise ValueError("scale/per_token_scale need int8 x; for an int weight with float "
                             "x use antiquant_scale")
        if w.is_floating_point():
            weight = w.float()
        else:
            wi = _int_weight(w, k, "weight")
            s = p["antiquant_scale"]
            groups = s.shape[0] if s is not None and s.dim() == 2 and s.shape[0] > 1 else 0
            if groups and k % groups:
                raise ValueError(f"per-group antiquant_scale ({groups}, n) needs K={k} "
                                 f"divisible by its {groups} groups")
            weight = _antiquant(wi, s, p["antiquant_offset"], k // groups if groups else 0)
        if weight.dim() != 2 or weight.shape[0] != k:
            raise ValueError(f"weight must be (k={k}, n), got {tuple(w.shape)}")
        y = x.float() @ weight
        _check_bias(p["bias"], weight.shape[1], y.shape)
        if p["bias"] is not None:
            y = y + p["bias"].float()
    else:
        raise ValueError(f"x must be int8 or floating, got {x.dtype}")
    return _cast_out(y if act is None else act(y), dtype)


def _a8w4(x, w, p: dict, pertoken):
    """int8 ``x (m, k)`` with packed int4 ``w (k, n/8)`` (A8W4), fp32 result (m, n).

    The device splits each int8 activation into two int4 halves around an offset of 8
    (``x - 8 = 16 * hi + lo`` with ``hi, lo`` in [-8, 7]) and multiplies those, so the
    bare product is ``(x - 8) @ W``; the caller's float ``bias`` must supply the
    ``8 * sum_k W_deq[k, n]`` that restores ``x @ W_deq``. Per group g of ``k / G`` rows::

        y[m, n] = (sum_g scale[g, n] * sum_{k in g} (x[m, k] - 8) * w[k, n] + bias[n])
                  * per_token_scale[m]

    scale ``(G, n)`` per group (G divides k) or ``(n,)``/``(1, n)`` per channel, fp32 or int64
    (fp32 bit pattern in the low 32 bits, decoded like a quant param). bias float ``(n,)``
    or None; per_token_scale ``(m,)`` or None. offset and an int32 bias are rejected.
    """
    k = x.shape[-1]
    if w.dtype == torch.int32 and w.dim() >= 2 and (k == w.shape[-2] or k == 8 * w.shape[-2]):
        n = _n_of(w, k)  # the packed forms _int_weight accepts, checked without unpacking
    else:
        n = _int_weight(w, k, "weight").shape[-1]  # (raises for the other forms)
    if w.dim() != 2:
        raise ValueError(f"weight must be packed int4 (k={k}, n/8), got {tuple(w.shape)}")
    s, off, bias = p["scale"], p["offset"], p["bias"]
    if s is None or off is not None:
        raise ValueError("int8 x with a packed int4 weight (A8W4) needs scale and no offset")
    if bias is not None and not bias.is_floating_point():
        raise ValueError("A8W4 takes a floating bias (8 * sum_k W_deq[k, n]), not int32")
    if s.dim() == 2 and s.shape[0] > 1:  # per group (decoded below only if used)
        groups, sv = s.shape[0], None
        if s.shape[1] != n or k % groups:
            raise ValueError(f"per-group scale must be (G, n={n}) with G dividing k={k}, "
                             f"got {tuple(s.shape)}")
    else:
        groups, sv = 1, _vector(s, n, "scale").expand(n).reshape(1, n)
    # The same exact group sums from the 0.5-byte weight by a compiled kernel when one applies.
    y = cpu_kernels.a8w4_mm(x, w, s)
    if y is None:
        if sv is None:
            sv = decode_quant_param(s) if s.dtype == torch.int64 else s.float()
        wi = _int_weight(w, k, "weight")
        xs = (x.double() - 8).reshape(x.shape[0], groups, k // groups)
        acc = torch.einsum("mgk,gkn->mgn", xs, wi.double().reshape(groups, k // groups, n))
        y = (acc.float() * sv.unsqueeze(0)).sum(dim=1)
    _check_bias(bias, n, y.shape)
    if bias is not None:
        y = y + bias.float()
    return y if pertoken is None else y * pertoken.float()[:, None]


def _as_list(v):
    """Tensor[] arguments also accept a bare tensor."""
    return None if v is None else [v] if isinstance(v, torch.Tensor) else list(v)


def _n_of(w: torch.Tensor, k: int) -> int:
    """Output columns of a (k, n) weight, int4-packed layouts included."""
    if w.dtype == torch.int32:
        return w.shape[-1] * 8 if w.shape[-2] == k else w.shape[-1]
    return w.shape[-1]


def npu_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None, antiquant_scale=None,
                       antiquant_offset=None, per_token_scale=None, group_list=None,
                       activation_input=None, activation_quant_scale=None,
                       activation_quant_offset=None, split_item=0, group_type=None,
                       group_list_type=0, act_type=0, tuning_config=None, output_dtype=None,
                       x_dtype=None, weight_dtype=None, scale_dtype=None,
                       per_token_scale_dtype=None):
    """Grouped matmul -> list of tensors.

    List form (group_list None): ``x[i] (m_i, k_i) @ weight[i] (k_i, n_i)`` per pair, with
    per-pair params; split_item 0/1 -> one output per pair, 2/3 -> ``[cat(outputs)]``.
    MoE form: ``x=[X (M, K)]``, ``weight=[W (E, K, N)]`` (or E tensors (K, N); int32 =
    packed int4 (E, K, N/8)), ``group_type=0``, ``group_list`` (<= E entries) of cumulative
    row ends (``group_list_type=0``) or counts (1). Per-expert params are ``[P (E, ...)]``
    (or E tensors): bias (E, N), scale (E, N) fp32/bf16/int64, antiquant_scale/offset (E, N)
    or (E, G, N) per group of K/G rows; per_token_scale ``[(M,)]``. Per group:
    float ``x@W + b``; int8 ``(x@W + b_int) * scale [+ offset]`` or
    ``(x@W) * scale[e] * per_token_scale[m] [+ b_float]``; antiquant ``x@((W + off) * s) + b``;
    int8 without scale -> int32 accumulators; int8 x with packed int4 W (A8W4, scale (E, N) or
    (E, G, N) per group) ``(sum_g s[g] * ((x - 8) @ W)_g + b_float) * per_token_scale[m]``
    (see ``_a8w4``). split_item 2/3 -> ``[Y (M, N)]`` (rows past the
    total stay 0), 0/1 -> one tensor per group. act_type: 0 none, 1 relu, 2 gelu-tanh, 5 silu.
    """
    x, weight = _as_list(x), _as_list(weight)
    if not x or not weight:
        raise ValueError("x and weight must be non-empty lists of tensors")
    for name, v in (("activation_input", activation_input),
                    ("activation_quant_scale", activation_quant_scale),
                    ("activation_quant_offset", activation_quant_offset)):
        if v is not None:
            raise ValueError(f"{name} is not supported by the reference backend; accepted: None")
    if split_item not in (0, 1, 2, 3):
        raise ValueError(f"split_item={split_item!r}; accepted: 0, 1, 2, 3")
    if act_type not in _ACTIVATIONS:
        raise ValueError(f"act_type={act_type!r}; accepted: {sorted(_ACTIVATIONS)}")
    for name, d in (("x_dtype", x_dtype), ("weight_dtype", weight_dtype),
                    ("scale_dtype", scale_dtype), ("per_token_scale_dtype", per_token_scale_dtype)):
        as_dtype(d, arg=name)
    act = _ACTIVATIONS[act_type]
    per_token_scale = _as_list(per_token_scale)
    given = dict(zip(_GMM_PARAMS, map(_as_list, (bias, scale, offset, antiquant_scale,
                                                 antiquant_offset))))
    given["per_token_scale"] = per_token_scale
    x_type = x[0].dtype
    default = (torch.int8 if scale is not None else torch.int32) if x_type == torch.int8 else x_type
    dtype = _out_dtype(output_dtype, default)

    if group_list is None:
        if group_type not in (None, -1):
            raise ValueError(f"group_type={group_type} needs group_list")
        if len(x) != len(weight):
            raise ValueError(f"x and weight must have equal lengths without group_list, got "
                             f"{len(x)} and {len(weight)}")
        for name, v in given.items():
            if v is not None and len(v) != len(x):
                raise ValueError(f"{name} must have one tensor per x/weight pair ({len(x)}), "
                                 f"got {len(v)}")
        outs = [_gmm_one(x[i], weight[i], {n: given[n] and given[n][i] for n in _GMM_PARAMS},
                         per_token_scale and per_token_scale[i], dtype, act)
                for i in range(len(x))]
        return [torch.cat(outs)] if split_item in (2, 3) else outs

    if group_type != 0:
        raise ValueError(f"group_type={group_type!r} with group_list; accepted: 0 (split on M)")
    if len(x) != 1 or x[0].dim() != 2:
        raise ValueError("the grouped (MoE) form takes x=[X (M, K)]")
    xm = x[0]
    # All groups in one C++ op where it covers the arguments (grouped_matmul.py), else the loop.
    fast = grouped_matmul.moe_fast(xm, weight, **given, group_list=group_list,
                                   split_item=split_item, group_list_type=group_list_type,
                                   act_type=act_type, dtype=dtype)
    if fast is not None:
        return fast
    m, k = xm.shape
    stacked = len(weight) == 1 and weight[0].dim() == 3
    experts = weight[0].shape[0] if stacked else len(weight)
    w_of = (lambda e: weight[0][e]) if stacked else (lambda e: weight[e])
    gl = torch.as_tensor(group_list).reshape(-1).to(torch.int64)
    if group_list_type == 1:
        if bool((gl < 0).any()):
            raise ValueError(f"group_list counts must be non-negative, got {gl.tolist()}")
        gl = gl.cumsum(0)
    elif group_list_type != 0:
        raise ValueError(f"group_list_type={group_list_type!r}; accepted: 0 (cumulative), "
                         "1 (counts)")
    ends = group_ends(gl, experts, m, arg="group_list").tolist()
    for name in _GMM_PARAMS:
        if given[name] is not None and len(given[name]) != (1 if stacked else experts):
            raise ValueError(f"{name} must be [{name.upper()} (E={experts}, ...)] or "
                             f"{experts} tensors, got {len(given[name])}")
    pts = None
    if per_token_scale is not None:
        if len(per_token_scale) != 1 or per_token_scale[0].numel() != m:
            raise ValueError(f"per_token_scale must be [(M={m},)]")
        pts = per_token_scale[0].reshape(m)

    out = torch.zeros(m, _n_of(w_of(0), k), dtype=dtype, device=xm.device)
    bounds = list(zip([0] + ends[:-1], ends))
    for e, (lo, hi) in enumerate(bounds):
        if hi == lo:
            continue
        p = {n: given[n] and (given[n][0][e] if stacked else given[n][e]) for n in _GMM_PARAMS}
        out[lo:hi] = _gmm_one(xm[lo:hi], w_of(e), p, None if pts is None else pts[lo:hi],
                              dtype, act)
    return [out] if split_item in (2, 3) else [out[lo:hi] for lo, hi in bounds]
