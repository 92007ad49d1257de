"""Reference ops: MC2 expert-parallel dispatch / combine (torch_npu_ops.md, "MC2").

On the NPU these are fused all-to-all kernels over the HCCL communicator named
``group_ep``. Here they run over torch.distributed (gloo on CPU): torch has no
name -> group lookup, so callers :func:`register_group` the process group under the
name they pass as ``group_ep`` (on every rank).

Layout (W ranks, E experts, ``L = E / W`` local experts; rank r owns experts
``[r*L, (r+1)*L)``; ``BS`` tokens, ``K`` experts per token, pair ``f = t*K + k``):

- the sender orders its active pairs by a stable sort on the expert id, i.e. by
  destination rank, then local expert, then token; ``expand_idx[f]`` is the position of
  pair f in that send order (-1 for tokens masked out by ``x_active_mask``);
- ``C[s, e]`` = rows source rank s sends to local expert e of this rank;
  ``ep_recv_counts`` is C flattened, ``(W * L,)`` int32, index ``s*L + e``;
- ``expand_x`` rows are grouped by local expert, then by source rank, then token order.

Combine undoes the regrouping with C, sends every row back to its source, and each rank
sums ``expert_scales[t, k] * y(t, k)`` with ``y(t, k) = returned[expand_idx[t*K + k]]``.
Device limits (H, BS, K, expert counts) are not checked here; shapes are.
"""

from __future__ import annotations

import weakref

import torch
import torch.distributed as dist

from vllm_ascend.device.reference.activation import _choice
from vllm_ascend.device.reference.moe import _gather_sum
from vllm_ascend.device.reference.quant import npu_dynamic_quant as _dynamic_quant
from vllm_ascend.distributed.all_to_all import all_to_all_v

#: communicator name -> process group (the reference's stand-in for HCCL's names). Held
#: weakly: a destroyed group, once collected, drops out (and its name can be reused).
_GROUPS: "weakref.WeakValueDictionary[str, dist.ProcessGroup]" = weakref.WeakValueDictionary()


def register_group(name: str, group: dist.ProcessGroup) -> None:
    """Make ``group`` reachable as ``group_ep=name``; re-registering the same group is a no-op."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"group name must be a non-empty string, got {name!r}")
    existing = _GROUPS.get(name)
    if existing is not None and existing is not group:
        raise ValueError(f"group name {name!r} is already registered for another process group")
    _GROUPS[name] = group


def lookup_group(name: str) -> dist.ProcessGroup:
    """The process group registered as ``name``."""
    try:
        return _GROUPS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in sorted(_GROUPS)) or "none"
        raise ValueError(
            f"group_ep={name!r} is not a registered process group (registered: {known}); "
            "call vllm_ascend.device.reference.mc2.register_group(name, group) on every rank"
        ) from None


def _local_experts(ep_world_size: int, moe_expert_num: int) -> int:
    """L, the experts per rank."""
    if moe_expert_num <= 0 or ep_world_size <= 0 or moe_expert_num % ep_world_size:
        raise ValueError(
            f"moe_expert_num={moe_expert_num} must be a positive multiple of "
            f"ep_world_size={ep_world_size}"
        )
    return moe_expert_num // ep_world_size


def _ep_group(group_ep: str, ep_world_size: int, ep_rank_id: int) -> dist.ProcessGroup:
    """The registered group, checked against ep_world_size and ep_rank_id."""
    group = lookup_group(group_ep)
    if dist.get_world_size(group) != ep_world_size:
        raise ValueError(
            f"ep_world_size={ep_world_size} but group {group_ep!r} has "
            f"{dist.get_world_size(group)} ranks"
        )
    if dist.get_rank(group) != ep_rank_id:
        raise ValueError(
            f"ep_rank_id={ep_rank_id} but this process is rank {dist.get_rank(group)} "
            f"of group {group_ep!r}"
        )
    return group


def _check_unsupported(group_tp, tp_world_size, tp_rank_id, expert_shard_type,
                       shared_expert_rank_num, global_bs) -> None:
    if group_tp or tp_world_size > 1 or tp_rank_id != 0:
        raise ValueError(
            f"group_tp={group_tp!r}, tp_world_size={tp_world_size}, tp_rank_id={tp_rank_id}: "
            "the reference has no TP leg; accepted: '', 0 or 1, 0"
        )
    _choice("expert_shard_type", expert_shard_type, {0: "experts split contiguously"})
    _choice("shared_expert_rank_num", shared_expert_rank_num, {0: "no dedicated shared ranks"})
    if global_bs < 0:
        raise ValueError(f"global_bs={global_bs} must be >= 0 (0: equal BS on every rank)")


def _check_expert_ids(expert_ids, bs: int, moe_expert_num: int) -> None:
    if expert_ids.dim() != 2 or expert_ids.shape[0] != bs:
        raise ValueError(f"expert_ids must be (BS={bs}, K), got shape {tuple(expert_ids.shape)}")
    if expert_ids.is_floating_point() or expert_ids.is_complex() or expert_ids.dtype == torch.bool:
        raise ValueError(f"expert_ids must be an integer tensor, got {expert_ids.dtype}")
    if expert_ids.numel() and not (
        int(expert_ids.min()) >= 0 and int(expert_ids.max()) < moe_expert_num
    ):
        raise ValueError(f"expert_ids values must be in [0, moe_expert_num={moe_expert_num})")


def _check_rows(name, t, bs, width=None):
    if t is None:
        return
    want = (bs,) if width is None else (bs, width)
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def _regroup(counts: torch.Tensor) -> torch.Tensor:
    """Source-major -> expert-major permutation for a (W, L) block-count matrix C:
    ``expert_major = source_major[perm]``."""
    w, l = counts.shape
    local_expert = torch.repeat_interleave(torch.arange(l).repeat(w), counts.reshape(-1))
    return torch.argsort(local_expert, stable=True)


def npu_moe_distribute_dispatch(
    x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *, scales=None,
    x_active_mask=None, expert_scales=None, group_tp="", tp_world_size=0, tp_rank_id=0,
    expert_shard_type=0, shared_expert_num=1, shared_expert_rank_num=0, quant_mode=0,
    global_bs=0, expert_token_nums_type=1,
):
    """Send each token to the ranks owning its K experts (layout: module docstring).

    x ``(BS, H)``; expert_ids ``(BS, K)`` int; scales ``(E, H)`` smooth factors (quant_mode
    2 only): the copy for expert e is quantised as ``x * scales[e]``; x_active_mask ``(BS,)``
    bool (False: the token is not sent); expert_scales ``(BS, K)`` fp32, forwarded with
    the rows. quant_mode 0 sends x as is, 2 quantises per row to int8
    (``npu_dynamic_quant``) before sending.

    Returns (expand_x ``(A, H)`` grouped by local expert (int8 for quant_mode 2),
    dynamic_scales ``(A,)`` fp32 (empty unless quant_mode 2), expand_idx ``(BS*K,)`` int32,
    expert_token_nums ``(L,)`` int64 (type 1 counts, 0 cumulative), ep_recv_counts
    ``(W*L,)`` int32, tp_recv_counts (empty: no TP), expand_scales ``(A,)`` fp32 (empty
    without expert_scales)), with A the number of rows received.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (BS, H), got shape {tuple(x.shape)}")
    _check_expert_ids(expert_ids, x.shape[0], moe_expert_num)
    bs, k = expert_ids.shape
    _check_rows("x_active_mask", x_active_mask, bs)
    _check_rows("expert_scales", expert_scales, bs, k)
    _choice("quant_mode", quant_mode, {0: "none", 2: "dynamic per-token int8"})
    _choice("expert_token_nums_type", expert_token_nums_type, {0: "cumulative", 1: "counts"})
    if scales is not None:
        if quant_mode != 2:
            raise ValueError("scales (smooth factors) are only used with quant_mode=2")
        _check_rows("scales", scales, moe_expert_num, x.shape[1])
    if quant_mode == 2 and not x.is_floating_point():
        raise ValueError(f"quant_mode=2 needs a floating-point x, got {x.dtype}")
    _check_unsupported(group_tp, tp_world_size, tp_rank_id, expert_shard_type,
                       shared_expert_rank_num, global_bs)
    local = _local_experts(ep_world_size, moe_expert_num)
    group = _ep_group(group_ep, ep_world_size, ep_rank_id)

    # Send side: active pairs in (expert, token) order, i.e. grouped by destination rank.
    flat = expert_ids.reshape(-1).long()
    active = torch.ones(bs * k, dtype=torch.bool)
    if x_active_mask is not None:
        active = x_active_mask.bool().repeat_interleave(k)
    order = torch.argsort(torch.where(active, flat, moe_expert_num), stable=True)
    order = order[: int(active.sum())]
    expand_idx = torch.full((bs * k,), -1, dtype=torch.int32)
    expand_idx[order] = torch.arange(order.numel(), dtype=torch.int32)
    send_matrix = torch.bincount(flat[order], minlength=moe_expert_num).view(ep_world_size, local)

    rows = x[order // k]
    row_scales = torch.empty(0, dtype=torch.float32)
    if quant_mode == 2:
        if scales is not None:
            rows = rows.float() * scales.float()[flat[order]]
        rows, row_scales = _dynamic_quant(rows)

    # Exchange: counts per (rank, local expert), then rows (and their scales).
    counts, _ = all_to_all_v(send_matrix.reshape(-1), [local] * ep_world_size, group,
                             recv_counts=[local] * ep_world_size)
    recv_matrix = counts.view(ep_world_size, local)
    send_rows, recv_rows = send_matrix.sum(1).tolist(), recv_matrix.sum(1).tolist()
    perm = _regroup(recv_matrix)

    def exchange(t: torch.Tensor) -> torch.Tensor:
        return all_to_all_v(t, send_rows, group, recv_counts=recv_rows)[0][perm]

    expand_x = exchange(rows)
    dynamic_scales = exchange(row_scales) if quant_mode == 2 else row_scales
    expand_scales = torch.empty(0, dtype=torch.float32)
    if expert_scales is not None:
        expand_scales = exchange(expert_scales.float().reshape(-1)[order])

    expert_token_nums = recv_matrix.sum(0).to(torch.int64)
    if expert_token_nums_type == 0:
        expert_token_nums = expert_token_nums.cumsum(0)
    ep_recv_counts = recv_matrix.reshape(-1).to(torch.int32)
    tp_recv_counts = torch.empty(0, dtype=torch.int32)
    return (expand_x, dynamic_scales, expand_idx, expert_token_nums, ep_recv_counts,
            tp_recv_counts, expand_scales)


def npu_moe_distribute_combine(
    expand_x, expert_ids, expand_idx, ep_send_counts, expert_scales, group_ep, ep_world_size,
    ep_rank_id, moe_expert_num, *, tp_send_counts=None, x_active_mask=None,
    activation_scale=None, weight_scale=None, group_list=None, expand_scales=None,
    shared_expert_x=None, group_tp="", tp_world_size=0, tp_rank_id=0, expert_shard_type=0,
    shared_expert_num=1, shared_expert_rank_num=0, global_bs=0, out_dtype=0,
    comm_quant_mode=0, group_list_type=0,
):
    """Return the expert outputs to their tokens and reduce them.

    expand_x ``(A', H)``: expert outputs in dispatch's expand_x row order (rows past the
    received total are ignored); expert_ids ``(BS, K)``, expand_idx and ep_send_counts
    (= dispatch's ep_recv_counts) as returned by dispatch; expert_scales ``(BS, K)``;
    shared_expert_x ``(BS, H)`` or None. Returns ``(BS, H)`` in expand_x's dtype:
    ``out[t] = sum_k expert_scales[t,k] * y(t,k) (+ shared_expert_x[t])``, 0 for masked
    tokens. x_active_mask is implied by expand_idx (-1 entries) and only shape-checked;
    expand_scales and tp_send_counts are accepted and unused (the weights come from
    expert_scales; there is no TP leg).
    """
    if expand_x.dim() != 2:
        raise ValueError(f"expand_x must be 2-D (A, H), got shape {tuple(expand_x.shape)}")
    if expert_ids.dim() != 2:
        raise ValueError(f"expert_ids must be 2-D (BS, K), got shape {tuple(expert_ids.shape)}")
    _check_expert_ids(expert_ids, expert_ids.shape[0], moe_expert_num)
    bs, k = expert_ids.shape
    hidden = expand_x.shape[1]
    if expand_idx.numel() != bs * k:
        raise ValueError(
            f"expand_idx must have BS*K={bs * k} entries (from dispatch), "
            f"got shape {tuple(expand_idx.shape)}"
        )
    _check_rows("expert_scales", expert_scales, bs, k)
    _check_rows("x_active_mask", x_active_mask, bs)
    _check_rows("shared_expert_x", shared_expert_x, bs, hidden)
    for name, value in (("activation_scale", activation_scale), ("weight_scale", weight_scale),
                        ("group_list", group_list)):
        if value is not None:
            raise ValueError(f"{name} is reserved (quantised combine); accepted: None")
    _choice("comm_quant_mode", comm_quant_mode, {0: "no communication quantisation"})
    _choice("out_dtype", out_dtype, {0: "expand_x's dtype"})
    _choice("group_list_type", group_list_type, {0: "cumulative", 1: "counts"})
    _check_unsupported(group_tp, tp_world_size, tp_rank_id, expert_shard_type,
                       shared_expert_rank_num, global_bs)
    local = _local_experts(ep_world_size, moe_expert_num)
    if ep_send_counts.numel() != ep_world_size * local:
        raise ValueError(
            f"ep_send_counts must have W*L={ep_world_size * local} entries (dispatch's "
            f"ep_recv_counts), got shape {tuple(ep_send_counts.shape)}"
        )
    group = _ep_group(group_ep, ep_world_size, ep_rank_id)
    recv_matrix = ep_send_counts.reshape(ep_world_size, local).long()
    total = int(recv_matrix.sum())
    if expand_x.shape[0] < total:
        raise ValueError(f"expand_x has {expand_x.shape[0]} rows; dispatch received {total}")

    # Expert-major -> source-major, then back to the sources in their send order.
    source_major = expand_x.new_empty((total, hidden))
    source_major[_regroup(recv_matrix)] = expand_x[:total]
    idx = expand_idx.reshape(-1).long()
    sent = idx >= 0
    dest = expert_ids.reshape(-1).long()[sent] // local
    sent_rows = torch.bincount(dest, minlength=ep_world_size).tolist()
    returned, _ = all_to_all_v(source_major, recv_matrix.sum(1).tolist(), group,
                               recv_counts=sent_rows)
    out = _gather_sum(returned, idx.view(bs, k), expert_scales)
    if shared_expert_x is not None:
        out = out + shared_expert_x.to(out.dtype)
    return out.to(expand_x.dtype)
