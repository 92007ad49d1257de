"""Reference ops: MoE gating and routing (torch_npu_ops.md, "MoE routing").

Shapes: ``N`` tokens, ``E`` experts, ``K`` experts per token, ``H`` hidden size.
A token-expert pair ``(i, j)`` has the row-major flat index ``f = i*K + j`` (the
v1 ops use the column-major ``row_idx = j*N + i`` instead). Every routing op
orders pairs by a *stable* sort on the expert id, so ties keep token order.
"""

from __future__ import annotations

import torch

from vllm_ascend.device.reference import moe_fast
from vllm_ascend.device.reference._common import as_dtype
from vllm_ascend.device.reference.activation import _choice, _dynamic_int8, _f32


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last dim, descending; ties go to the lower index."""
    values, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], idx[..., :k]


def _check_k(k: int, num_experts: int, arg: str = "k") -> None:
    if not 1 <= k <= num_experts:
        raise ValueError(f"{arg}={k} must be in [1, {num_experts}] (the number of experts)")


def _gather_sum(
    rows: torch.Tensor,
    idx: torch.Tensor,
    weights: torch.Tensor | None,
    row_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[i] = sum_j w[i,j] * (rows[idx[i,j]] + row_bias[i,j])``; idx outside rows adds 0.

    rows ``(R, H)``, idx ``(N, K)``, weights ``(N, K)`` or None (weight 1),
    row_bias ``(N, K, H)`` or None. Accumulates in fp32 (fp64 for fp64 rows).
    """
    acc = torch.promote_types(rows.dtype, torch.float32)
    valid = (idx >= 0) & (idx < rows.shape[0])
    if rows.shape[0] == 0:
        picked = rows.new_zeros((*idx.shape, rows.shape[-1]), dtype=acc)
    else:
        picked = rows.to(acc)[torch.where(valid, idx, 0)]
    if row_bias is not None:
        picked = picked + row_bias.to(acc)
    w = torch.ones(idx.shape, dtype=acc) if weights is None else weights.to(acc)
    w = torch.where(valid, w, 0)
    return (picked * w.unsqueeze(-1)).sum(dim=1)


# ---------------------------------------------------------------------------------- gating


def npu_moe_gating_top_k_softmax(x, finished=None, k=1):
    """Softmax gating with top-k, no renormalisation.

    x ``(..., E)``; finished ``x.shape[:-1]`` bool or None: finished rows get expert
    id ``E`` (route nowhere), values unchanged. Returns y ``(..., k)`` in x's dtype,
    expert_idx ``(..., k)`` int32, row_idx ``(..., k)`` int32 with
    ``row_idx[i, j] = j*N + i`` (``N`` = number of rows, ``i`` the flat row index).
    """
    fast = moe_fast.gating_top_k_softmax(x, finished, k)  # one C++ op where it applies
    if fast is not None:
        return fast
    num_experts = x.shape[-1]
    _check_k(k, num_experts)
    probs = torch.softmax(_f32(x), dim=-1)
    y, idx = _topk(probs, k)
    if finished is not None:
        if tuple(finished.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"finished must have shape x.shape[:-1]={tuple(x.shape[:-1])}, "
                f"got {tuple(finished.shape)}"
            )
        idx = torch.where(finished.bool().unsqueeze(-1), num_experts, idx)
    n = idx.numel() // k
    rows = torch.arange(n).view(*x.shape[:-1], 1)
    row_idx = rows + torch.arange(k) * n
    return y.to(x.dtype), idx.to(torch.int32), row_idx.to(torch.int32)


def npu_moe_gating_top_k(
    x, k, *, bias=None, input_ids=None, tid2eid=None, k_group=1, group_count=1,
    group_select_mode=0, renorm=0, norm_type=0, out_flag=False, routed_scaling_factor=1.0,
    eps=1e-20,
):
    """Grouped top-k gating (DeepSeek style).

    x ``(N, E)``; bias ``(E,)`` or None. In fp32: ``s = softmax(x)`` (norm_type 0) or
    ``sigmoid(x)`` (norm_type 1); ``sb = s + bias``. With ``group_count = G > 1`` the
    experts form G equal groups scored on ``sb`` by their max (group_select_mode 0) or
    the sum of their top 2 (mode 1); experts outside the best ``k_group`` groups are
    excluded. ``idx = topk(sb, k)``, ``y = s[idx]``; for norm_type 1 only,
    ``y /= sum(y) + eps``; then ``y *= routed_scaling_factor``.
    Returns y ``(N, k)`` in x's dtype, expert_idx ``(N, k)`` int32, norm_out ``s``
    ``(N, E)`` fp32 (returned whatever out_flag). Ties go to the lower expert / group index.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, E), got shape {tuple(x.shape)}")
    if input_ids is not None or tid2eid is not None:
        raise ValueError("input_ids/tid2eid (hash routing) are not supported; pass None")
    _choice("norm_type", norm_type, {0: "softmax", 1: "sigmoid"})
    _choice("renorm", renorm, {0: "norm, then top-k"})
    _choice("group_select_mode", group_select_mode, {0: "group max", 1: "sum of the top 2"})
    n, num_experts = x.shape
    if group_count < 1 or num_experts % group_count:
        raise ValueError(
            f"group_count={group_count} must be >= 1 and divide the number of experts {num_experts}"
        )
    if not 1 <= k_group <= group_count:
        raise ValueError(f"k_group={k_group} must be in [1, group_count={group_count}]")
    group_size = num_experts // group_count
    if group_count > 1 and group_select_mode == 1 and group_size < 2:
        raise ValueError("group_select_mode=1 needs at least 2 experts per group")
    _check_k(k, k_group * group_size if group_count > 1 else num_experts)
    if bias is not None and tuple(bias.shape) != (num_experts,):
        raise ValueError(f"bias must have shape ({num_experts},), got {tuple(bias.shape)}")

    xf = _f32(x)
    s = torch.sigmoid(xf) if norm_type == 1 else torch.softmax(xf, dim=-1)
    sb = s if bias is None else s + _f32(bias)
    if group_count > 1:
        groups = sb.view(n, group_count, group_size)
        if group_select_mode == 0:
            group_score = groups.amax(dim=-1)
        else:
            group_score = _topk(groups, 2)[0].sum(dim=-1)
        _, keep = _topk(group_score, k_group)
        kept = torch.zeros(n, group_count, dtype=torch.bool).scatter_(1, keep, True)
        sb = sb.masked_fill(~kept.repeat_interleave(group_size, dim=1), float("-inf"))
    _, idx = _topk(sb, k)
    y = s.gather(1, idx)
    if norm_type == 1:
        y = y / (y.sum(dim=-1, keepdim=True) + eps)
    y = y * routed_scaling_factor
    return y.to(x.dtype), idx.to(torch.int32), s


# --------------------------------------------------------------------------------- routing


def _check_pairs(x: torch.Tensor, expert_idx: torch.Tensor) -> None:
    if x.dim() != 2 or expert_idx.dim() != 2 or expert_idx.shape[0] != x.shape[0]:
        raise ValueError(
            f"x must be (N, H) and expert_idx (N, K); "
            f"got {tuple(x.shape)} and {tuple(expert_idx.shape)}"
        )


def _expert_range(active_expert_range, expert_num: int, flat: torch.Tensor) -> tuple[int, int]:
    if active_expert_range is not None and len(active_expert_range) > 0:
        if len(active_expert_range) != 2:
            raise ValueError(
                f"active_expert_range={list(active_expert_range)!r}; accepted: [] or [start, end]"
            )
        start, end = (int(v) for v in active_expert_range)
        if not 0 <= start < end or (expert_num > 0 and end > expert_num):
            raise ValueError(
                f"active_expert_range=[{start}, {end}] needs 0 <= start < end <= expert_num"
                f"={expert_num}"
            )
        return start, end
    if expert_num > 0:
        return 0, expert_num
    return 0, int(flat.max()) + 1 if flat.numel() else 0


def _expert_tokens(counts: torch.Tensor, num_type: int, start: int) -> torch.Tensor:
    """type 0 cumulative, 1 counts, 2 ``[expert_id, count]`` rows of non-empty experts."""
    if num_type == 0:
        return counts.cumsum(0)
    if num_type == 1:
        return counts
    present = torch.nonzero(counts).squeeze(1)
    pairs = torch.zeros(counts.numel(), 2, dtype=torch.int64)
    pairs[: present.numel(), 0] = present + start
    pairs[: present.numel(), 1] = counts[present]
    return pairs


def npu_moe_init_routing_v2(
    x, expert_idx, *, scale=None, offset=None, active_num=-1, expert_capacity=-1,
    expert_num=-1, drop_pad_mode=0, expert_tokens_num_type=0, expert_tokens_num_flag=False,
    quant_mode=-1, active_expert_range=(), row_idx_type=0, x_dtype=None,
):
    """Dropless MoE routing: group token copies by expert.

    x ``(N, H)``, expert_idx ``(N, K)``. Pairs ``f = i*K + j`` are stable-sorted by
    expert; only experts in ``[start, end)`` (active_expert_range, else
    ``[0, expert_num)``) are kept, in that order, as output rows ``p``. The output has
    ``R = N*K`` rows (``min(active_num, N*K)`` when active_num >= 0); rows past the kept
    pairs are zero.

    Returns
      expanded_x ``(R, H)``: ``x[order[p] // K]`` (int8 for quant_mode 1);
      expanded_row_idx ``(N*K,)`` int32: ``[f] = p``, -1 when dropped;
      expert_tokens int64 (only with expert_tokens_num_flag, else empty): per expert of
      the range, type 0 cumulative counts ``(E',)``, type 1 counts ``(E',)``, type 2
      ``(E', 2)`` ``[expert_id, count]`` rows for experts with tokens, then zero rows;
      expanded_scale ``(R,)`` fp32: quant_mode 1 the dynamic int8 scale of
      ``x_row * scale[expert - start]`` (scale ``(E', H)`` or ``(1, H)`` or None);
      quant_mode -1 ``scale[token]`` for a given scale ``(N,)``, else zeros.
    """
    fast = moe_fast.init_routing_v2(  # one C++ op where it applies
        x, expert_idx, scale=scale, offset=offset, active_num=active_num, expert_num=expert_num,
        drop_pad_mode=drop_pad_mode, expert_tokens_num_type=expert_tokens_num_type,
        expert_tokens_num_flag=expert_tokens_num_flag, quant_mode=quant_mode,
        active_expert_range=active_expert_range, row_idx_type=row_idx_type, x_dtype=x_dtype)
    if fast is not None:
        return fast
    _check_pairs(x, expert_idx)
    _choice("drop_pad_mode", drop_pad_mode, {0: "dropless"})
    _choice("quant_mode", quant_mode, {-1: "none", 1: "dynamic int8"})
    _choice(
        "expert_tokens_num_type", expert_tokens_num_type,
        {0: "cumsum", 1: "count", 2: "key-value"},
    )
    _choice("row_idx_type", row_idx_type, {0: "expanded_row_idx[f] = p"})
    if offset is not None:
        raise ValueError("offset is only used by static quantisation (unsupported); pass None")
    as_dtype(x_dtype, arg="x_dtype")
    n, k = expert_idx.shape
    flat = expert_idx.reshape(-1).long()
    if expert_num > 0 and flat.numel() and (flat.min() < 0 or flat.max() >= expert_num):
        raise ValueError(f"expert_idx values must be in [0, expert_num={expert_num})")
    if expert_tokens_num_flag and expert_num <= 0 and not active_expert_range:
        raise ValueError("expert_tokens_num_flag=True needs expert_num > 0 or active_expert_range")
    start, end = _expert_range(active_expert_range, expert_num, flat)

    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    in_range = (sorted_experts >= start) & (sorted_experts < end)
    rows = n * k if active_num < 0 else min(active_num, n * k)
    kept = order[in_range][:rows]  # flat pair index f of each filled output row p
    kept_experts = sorted_experts[in_range][:rows]
    filled = kept.numel()

    expanded_row_idx = torch.full((n * k,), -1, dtype=torch.int32)
    expanded_row_idx[kept] = torch.arange(filled, dtype=torch.int32)

    src = x[kept // k]
    expanded_scale = torch.zeros(rows, dtype=torch.float32)
    if quant_mode == 1:
        if not x.is_floating_point():
            raise ValueError(f"quant_mode=1 needs a floating-point x, got {x.dtype}")
        v = _f32(src)
        if scale is not None:
            if scale.dim() != 2 or (scale.shape[0] != 1 and scale.shape[0] != end - start):
                raise ValueError(
                    f"scale must be ({end - start}, H) or (1, H) for quant_mode=1, "
                    f"got {tuple(scale.shape)}"
                )
            v = v * _f32(scale)[(kept_experts - start) if scale.shape[0] > 1 else 0]
        src, row_scale = _dynamic_int8(v)
        expanded_scale[:filled] = row_scale
    elif scale is not None:
        if tuple(scale.shape) != (n,):
            raise ValueError(f"scale must be ({n},) when quant_mode=-1, got {tuple(scale.shape)}")
        expanded_scale[:filled] = scale.float()[kept // k]
    expanded_x = src.new_zeros((rows, x.shape[1]))
    expanded_x[:filled] = src

    expert_tokens = torch.empty(0, dtype=torch.int64)
    if expert_tokens_num_flag:
        counts = torch.bincount(kept_experts - start, minlength=end - start)
        expert_tokens = _expert_tokens(counts, expert_tokens_num_type, start)
    return expanded_x, expanded_row_idx, expert_tokens, expanded_scale


def npu_moe_init_routing(x, row_idx, expert_idx, active_num):
    """v1 routing: x ``(N, H)``, row_idx and expert_idx ``(N, K)`` (row_idx normally
    ``j*N + i``), active_num >= 0.

    Stable-sorts the row-major flattened expert ids; ``sorted_row[p] = row_idx.flat[order[p]]``.
    Returns expanded_x ``(min(N, active_num)*K, H)`` with ``[p] = x[sorted_row[p] % N]``,
    expanded_row_idx ``(N*K,)`` int32 with ``[sorted_row[p]] = p``, and
    expanded_expert_idx ``(N*K,)`` int32 (the sorted expert ids).
    """
    _check_pairs(x, expert_idx)
    if tuple(row_idx.shape) != tuple(expert_idx.shape):
        raise ValueError(
            f"row_idx shape {tuple(row_idx.shape)} must equal "
            f"expert_idx's {tuple(expert_idx.shape)}"
        )
    if active_num < 0:
        raise ValueError(f"active_num={active_num} must be >= 0")
    n, k = expert_idx.shape
    flat_rows = row_idx.reshape(-1).long()
    if flat_rows.numel() and (
        flat_rows.min() < 0
        or flat_rows.max() >= n * k
        or not torch.bincount(flat_rows, minlength=n * k).eq(1).all()
    ):
        raise ValueError(f"row_idx must be a permutation of 0..{n * k - 1}")
    flat = expert_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sorted_row = flat_rows[order]
    expanded_row_idx = torch.empty(n * k, dtype=torch.int32)
    expanded_row_idx[sorted_row] = torch.arange(n * k, dtype=torch.int32)
    expanded_x = x[sorted_row[: min(n, active_num) * k] % max(n, 1)]
    return expanded_x, expanded_row_idx, flat[order].to(torch.int32)


def npu_moe_finalize_routing(
    expanded_permuted_rows, skip1, skip2, bias, scales, expanded_src_to_dst_row,
    export_for_source_row, drop_pad_mode=0, k=1,
):
    """Combine expert outputs back per token.

    ``out[i] = skip1[i] + skip2[i] + sum_j scales[i,j] * (rows[d] + bias[expert[i,j]])``
    with ``d = src_to_dst[j*N + i]`` (drop_pad_mode 0/1, the v1 layout) or
    ``d = src_to_dst[i*K + j]`` (2/3, the init_routing_v2 layout); ``d`` of -1 (or
    outside rows) adds 0. rows ``(R, H)`` (or ``(E, C, H)``, flattened); skip1/skip2
    ``(N, H)``, bias ``(E, H)``, scales ``(N, K)`` (None: weight 1),
    expanded_src_to_dst_row ``(N*K,)``, export_for_source_row ``(N, K)`` (needed with
    bias). K comes from scales, else export_for_source_row, else ``k``.
    Returns ``(N, H)`` in the rows' dtype, accumulated in fp32.
    """
    fast = moe_fast.finalize_routing(  # one C++ op where it applies
        expanded_permuted_rows, skip1, skip2, bias, scales, expanded_src_to_dst_row,
        export_for_source_row, drop_pad_mode, k)
    if fast is not None:
        return fast
    col, row = "src_to_dst[j*N + i]", "src_to_dst[i*K + j]"
    _choice("drop_pad_mode", drop_pad_mode, {0: col, 1: col, 2: row, 3: row})
    rows = expanded_permuted_rows
    if rows.dim() == 3:
        rows = rows.reshape(-1, rows.shape[-1])
    if rows.dim() != 2:
        raise ValueError(f"expanded_permuted_rows must be 2-D or 3-D, got {tuple(rows.shape)}")
    if scales is not None:
        k = scales.shape[-1]
    elif export_for_source_row is not None:
        k = export_for_source_row.shape[-1]
    total = expanded_src_to_dst_row.numel()
    if k < 1 or total % k:
        raise ValueError(f"expanded_src_to_dst_row has {total} entries, not a multiple of k={k}")
    n, hidden = total // k, rows.shape[-1]
    flat = expanded_src_to_dst_row.reshape(-1).long()
    idx = flat.view(k, n).t() if drop_pad_mode in (0, 1) else flat.view(n, k)
    for name, t, shape in (
        ("scales", scales, (n, k)),
        ("export_for_source_row", export_for_source_row, (n, k)),
        ("skip1", skip1, (n, hidden)),
        ("skip2", skip2, (n, hidden)),
    ):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    row_bias = None
    if bias is not None:
        if export_for_source_row is None:
            raise ValueError("bias needs export_for_source_row (the expert of each pair)")
        row_bias = bias[export_for_source_row.long()]
    out = _gather_sum(rows, idx, scales, row_bias)
    for skip in (skip1, skip2):
        if skip is not None:
            out = out + skip.to(out.dtype)
    return out.to(expanded_permuted_rows.dtype)


def npu_moe_token_permute(tokens, indices, num_out_tokens=None, padded_mode=False):
    """Sort token copies by expert.

    tokens ``(N, H)``, indices ``(N, K)`` or ``(N,)`` expert ids. Stable sort of the
    flattened ids; ``permuted[p] = tokens[order[p] // K]`` for the first
    ``num_out_tokens`` rows (None or 0: all ``N*K``; negative: drop that many from the
    end). Returns (permuted ``(M, H)``, sorted_indices ``(N*K,)`` int32 with
    ``[f] = p``).
    """
    if padded_mode:
        raise ValueError("padded_mode=True is not supported; accepted: False")
    if tokens.dim() != 2 or indices.shape[0] != tokens.shape[0] or indices.dim() not in (1, 2):
        raise ValueError(
            f"tokens must be (N, H) and indices (N,) or (N, K); got {tuple(tokens.shape)}, "
            f"{tuple(indices.shape)}"
        )
    flat = indices.reshape(-1)
    k = 1 if indices.dim() == 1 else indices.shape[1]
    total = flat.numel()
    if not num_out_tokens:
        out_rows = total
    else:
        wanted = num_out_tokens if num_out_tokens > 0 else total + num_out_tokens
        out_rows = max(0, min(total, wanted))
    order = torch.argsort(flat, stable=True)
    sorted_indices = torch.empty(total, dtype=torch.int32)
    sorted_indices[order] = torch.arange(total, dtype=torch.int32)
    return tokens[order[:out_rows] // k], sorted_indices


def npu_moe_token_unpermute(
    permuted_tokens, sorted_indices, probs=None, padded_mode=False, restore_shape=None
):
    """Inverse of :func:`npu_moe_token_permute` with weighting.

    permuted_tokens ``(M, H)``, sorted_indices ``(N*K,)``, probs ``(N, K)`` or None
    (K = 1, weight 1). ``out[i] = sum_j probs[i,j] * permuted[sorted_indices[i*K + j]]``;
    indices outside ``[0, M)`` (dropped copies) add 0. restore_shape only matters in
    padded mode, which is unsupported. Returns ``(N, H)`` in permuted_tokens' dtype.
    """
    if padded_mode:
        raise ValueError("padded_mode=True is not supported; accepted: False")
    k = 1 if probs is None or probs.dim() == 1 else probs.shape[-1]
    total = sorted_indices.numel()
    if total % k or (probs is not None and probs.numel() != total):
        raise ValueError(
            f"sorted_indices has {total} entries; probs shape "
            f"{None if probs is None else tuple(probs.shape)} must hold the same number"
        )
    idx = sorted_indices.reshape(-1).long().view(total // k, k)
    weights = None if probs is None else probs.reshape(total // k, k)
    return _gather_sum(permuted_tokens, idx, weights).to(permuted_tokens.dtype)


def npu_moe_compute_expert_tokens(sorted_expert_for_source_row, num_expert):
    """Cumulative expert histogram: ``out[e]`` = number of entries <= e, int32 ``(num_expert,)``."""
    if num_expert < 0:
        raise ValueError(f"num_expert={num_expert} must be >= 0")
    ids = sorted_expert_for_source_row.reshape(-1).long().clamp(min=0)
    counts = torch.bincount(ids[ids < num_expert], minlength=num_expert)
    return counts.cumsum(0).to(torch.int32)
