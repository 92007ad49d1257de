"""Reference op: ``npu_fused_infer_attention_score`` (FIA), the subset the plugin calls.

Supported (anything else raises ValueError naming the argument):

- ``input_layout="TND"``: query ``(T, num_heads, D)``, tokens of all sequences packed.
  ``actual_seq_lengths`` are the **cumulative** query ends per sequence (``[3, 4, 9]`` =
  lengths 3, 1, 5). Rows past the last end are returned as zeros.
- Paged KV (``block_table`` given): key/value caches ``(num_blocks, block_size, H_kv * D)``
  (the kernel's BSH page layout) or ``(num_blocks, block_size, H_kv, D)``; strided views are
  accepted. ``block_table`` ``(B, max_blocks)`` maps a sequence's logical block to a
  physical one; ``block_size`` must equal the cache's dim 1. Here
  ``actual_seq_lengths_kv`` are the **per-sequence** KV lengths (not cumulative), as in
  vllm-ascend's paged call. The device needs ``block_size`` a multiple of 16; the
  reference accepts any positive size.
- Contiguous KV (``block_table`` None): key/value ``(T_kv, H_kv, D)`` with cumulative
  ``actual_seq_lengths_kv``, like the query.
- GQA: query head ``h`` reads KV head ``h // (num_heads // num_key_value_heads)``;
  ``num_key_value_heads=0`` means ``num_heads``.
- ``sparse_mode=0`` without ``atten_mask``: full (non-causal) attention. ``sparse_mode=3``
  (bottom-right causal): query ``i`` of a sequence with ``q_len`` queries and ``kv_len``
  keys sees keys ``j <= kv_len - q_len + i``. Like the device, mode 3 requires
  ``atten_mask``, the compressed ``(2048, 2048)`` upper-triangular mask; its shape is
  checked, the reference builds the causal mask itself.

Math in fp32 (fp64 stays fp64), output cast to the query dtype. Returns
``(attention_out (T, num_heads, D_v), softmax_lse)``; ``softmax_lse`` is ``(T, num_heads, 1)``
fp32 (natural log) when ``softmax_lse_flag`` else an empty fp32 tensor.
``inner_precise`` (a device precision mode) is validated and otherwise ignored.
"""

from __future__ import annotations

import torch

#: Side of the compressed causal mask FIA takes for sparse_mode 2/3/4.
COMPRESSED_MASK_SIZE = 2048
_INT_MAX = 2147483647
_SPARSE_MODES = {0: "no mask (full attention)", 3: "bottom-right causal"}
_UNSUPPORTED_TENSORS = (
    "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2",
    "quant_offset2", "antiquant_scale", "antiquant_offset", "key_antiquant_scale",
    "key_antiquant_offset", "value_antiquant_scale", "value_antiquant_offset",
    "query_padding_size", "kv_padding_size", "key_shared_prefix", "value_shared_prefix",
    "actual_shared_prefix_len", "query_rope", "key_rope", "key_rope_antiquant_scale",
)


def _int_list(value, arg: str) -> list[int]:
    """A SymInt[] argument (list, tuple or 1-D tensor) as a list of Python ints."""
    if value is None:
        raise ValueError(f"{arg} is required with input_layout='TND'")
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(f"{arg} must be 1-D, got shape {tuple(value.shape)}")
        return [int(v) for v in value.tolist()]
    return [int(v) for v in value]


def _lengths(ends: list[int], arg: str) -> list[int]:
    """Cumulative ends -> per-sequence lengths (ends must be non-decreasing, >= 0)."""
    starts = [0, *ends[:-1]]
    lens = [e - s for s, e in zip(starts, ends)]
    if any(n < 0 for n in lens):
        raise ValueError(f"{arg} must be non-decreasing cumulative ends (TND), got {ends}")
    return lens


def _as_bsnd(cache: torch.Tensor, num_kv_heads: int, arg: str) -> torch.Tensor:
    """A paged cache ``(nb, bs, H_kv*D)`` or ``(nb, bs, H_kv, D)`` as a 4-D view."""
    if cache.dim() == 4:
        if cache.shape[2] != num_kv_heads:
            raise ValueError(f"{arg} has {cache.shape[2]} heads, num_key_value_heads is "
                             f"{num_kv_heads}")
        return cache
    if cache.dim() == 3 and cache.shape[2] % num_kv_heads == 0:
        return cache.unflatten(2, (num_kv_heads, cache.shape[2] // num_kv_heads))
    raise ValueError(f"{arg} must be (num_blocks, block_size, {num_kv_heads} * D) or "
                     f"(num_blocks, block_size, {num_kv_heads}, D), got {tuple(cache.shape)}")


def _paged_rows(cache: torch.Tensor, blocks: torch.Tensor, kv_len: int) -> torch.Tensor:
    """The first kv_len token rows ``(kv_len, H_kv, D)`` of a sequence's pages."""
    return cache[blocks].flatten(0, 1)[:kv_len]


def _attend(q, k, v, scale: float, causal: bool, want_lse: bool):
    """One sequence: q ``(s, N, D)``, k ``(L, N, D)``, v ``(L, N, Dv)`` (heads already
    expanded) -> out ``(s, N, Dv)``, lse ``(s, N)`` or None."""
    s, kv_len = q.shape[0], k.shape[0]
    scores = torch.einsum("snd,lnd->nsl", q, k) * scale
    if causal:
        i = torch.arange(s, device=q.device).unsqueeze(1)
        j = torch.arange(kv_len, device=q.device).unsqueeze(0)
        scores = scores.masked_fill(j > kv_len - s + i, float("-inf"))
    out = torch.einsum("nsl,lnd->snd", torch.softmax(scores, dim=-1), v)
    lse = torch.logsumexp(scores, dim=-1).transpose(0, 1) if want_lse else None
    return out, lse


def _check_supported(tensors: dict, sparse_mode, atten_mask, pre_tokens, next_tokens,
                     input_layout, inner_precise) -> None:
    for name, value in tensors.items():
        if value is not None:
            raise ValueError(f"{name} is not supported by the reference "
                             "npu_fused_infer_attention_score (pass None)")
    if input_layout != "TND":
        raise ValueError(f"input_layout={input_layout!r}; accepted: 'TND'")
    if sparse_mode not in _SPARSE_MODES:
        raise ValueError(f"sparse_mode={sparse_mode!r}; accepted: "
                         + ", ".join(f"{k} ({v})" for k, v in _SPARSE_MODES.items()))
    if inner_precise not in (0, 1, 2, 3):
        raise ValueError(f"inner_precise={inner_precise!r}; accepted: 0, 1, 2, 3")
    if sparse_mode == 0:
        if atten_mask is not None:
            raise ValueError("atten_mask with sparse_mode=0 (an explicit mask) is not "
                             "supported; use sparse_mode=3 for causal attention")
        if pre_tokens != _INT_MAX or next_tokens != _INT_MAX:
            raise ValueError("pre_tokens/next_tokens (sliding windows) are not supported "
                             "with sparse_mode=0; leave them at 2147483647")
    else:
        side = COMPRESSED_MASK_SIZE
        if atten_mask is None or tuple(atten_mask.shape) != (side, side):
            got = None if atten_mask is None else tuple(atten_mask.shape)
            raise ValueError(f"sparse_mode=3 requires atten_mask, the compressed ({side}, "
                             f"{side}) upper-triangular mask; got {got}")


def npu_fused_infer_attention_score(query, key, value, *, pse_shift=None, atten_mask=None,
                                    actual_seq_lengths=None, actual_seq_lengths_kv=None,
                                    dequant_scale1=None, quant_scale1=None,
                                    dequant_scale2=None, quant_scale2=None,
                                    quant_offset2=None, antiquant_scale=None,
                                    antiquant_offset=None, key_antiquant_scale=None,
                                    key_antiquant_offset=None, value_antiquant_scale=None,
                                    value_antiquant_offset=None, block_table=None,
                                    query_padding_size=None, kv_padding_size=None,
                                    key_shared_prefix=None, value_shared_prefix=None,
                                    actual_shared_prefix_len=None, query_rope=None,
                                    key_rope=None, key_rope_antiquant_scale=None,
                                    num_heads=1, scale=1.0, pre_tokens=2147483647,
                                    next_tokens=2147483647, input_layout="BSH",
                                    num_key_value_heads=0, sparse_mode=0, inner_precise=0,
                                    block_size=0, antiquant_mode=0, key_antiquant_mode=0,
                                    value_antiquant_mode=0, softmax_lse_flag=False):
    """Paged / varlen attention (TND subset; see the module docstring for shapes)."""
    unsupported = {k: v for k, v in locals().items() if k in _UNSUPPORTED_TENSORS}
    _check_supported(unsupported, sparse_mode, atten_mask, pre_tokens, next_tokens,
                     input_layout, inner_precise)
    for name, mode in (("antiquant_mode", antiquant_mode),
                       ("key_antiquant_mode", key_antiquant_mode),
                       ("value_antiquant_mode", value_antiquant_mode)):
        if mode != 0:
            raise ValueError(f"{name}={mode!r}; only 0 is supported (no KV quantisation)")
    if query.dim() != 3 or query.shape[1] != num_heads:
        raise ValueError(f"query must be (T, num_heads={num_heads}, D) for TND, got "
                         f"{tuple(query.shape)}")
    kv_heads = num_key_value_heads or num_heads
    if kv_heads <= 0 or num_heads % kv_heads:
        raise ValueError(f"num_key_value_heads={num_key_value_heads} must divide "
                         f"num_heads={num_heads}")
    group = num_heads // kv_heads
    q_lens = _lengths(_int_list(actual_seq_lengths, "actual_seq_lengths"),
                      "actual_seq_lengths")
    kv_arg = _int_list(actual_seq_lengths_kv, "actual_seq_lengths_kv")
    if len(kv_arg) != len(q_lens):
        raise ValueError(f"actual_seq_lengths_kv has {len(kv_arg)} entries, "
                         f"actual_seq_lengths has {len(q_lens)}")
    if sum(q_lens) > query.shape[0]:
        raise ValueError(f"actual_seq_lengths ends at {sum(q_lens)}, query has "
                         f"{query.shape[0]} tokens")

    paged = block_table is not None
    if paged:
        kv_lens = kv_arg
        k_cache = _as_bsnd(key, kv_heads, "key")
        v_cache = _as_bsnd(value, kv_heads, "value")
        if block_size != k_cache.shape[1] or block_size <= 0:
            raise ValueError(f"block_size={block_size} must equal the caches' page size "
                             f"{k_cache.shape[1]} when block_table is given")
        if v_cache.shape[:2] != k_cache.shape[:2]:
            raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} pages differ")
        if block_table.dim() != 2 or block_table.shape[0] < len(q_lens):
            raise ValueError(f"block_table must be (B>={len(q_lens)}, max_blocks), got "
                             f"{tuple(block_table.shape)}")
    else:
        kv_lens = _lengths(kv_arg, "actual_seq_lengths_kv")
        if (key.dim() != 3 or value.dim() != 3 or key.shape[1] != kv_heads
                or value.shape[1] != kv_heads or min(key.shape[0], value.shape[0]) < sum(kv_lens)):
            raise ValueError(f"key/value must be (T_kv>={sum(kv_lens)}, {kv_heads}, D) without "
                             f"block_table, got {tuple(key.shape)} / {tuple(value.shape)}")

    work = torch.promote_types(query.dtype, torch.float32)
    d_v = value.shape[-1] if value.dim() == 4 or not paged else value.shape[-1] // kv_heads
    out = torch.zeros(query.shape[0], num_heads, d_v, dtype=work, device=query.device)
    lse = (torch.full((query.shape[0], num_heads, 1), float("-inf"), dtype=torch.float32,
                      device=query.device) if softmax_lse_flag else None)
    q_start, kv_start = 0, 0
    for b, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens)):
        if sparse_mode == 3 and kv_len < q_len:
            raise ValueError(f"sparse_mode=3: sequence {b} has {q_len} queries but only "
                             f"{kv_len} keys (actual_seq_lengths_kv must be >= query length)")
        if q_len == 0 or kv_len == 0:
            q_start, kv_start = q_start + q_len, kv_start + kv_len
            continue
        if paged:
            n_blocks = -(-kv_len // block_size)
            if n_blocks > block_table.shape[1]:
                raise ValueError(f"sequence {b} needs {n_blocks} blocks, block_table has "
                                 f"{block_table.shape[1]} columns")
            blocks = block_table[b, :n_blocks].long()
            if bool(((blocks < 0) | (blocks >= k_cache.shape[0])).any()):
                raise ValueError(f"block_table row {b} has ids outside [0, "
                                 f"{k_cache.shape[0]}): {blocks.tolist()}")
            k = _paged_rows(k_cache, blocks, kv_len)
            v = _paged_rows(v_cache, blocks, kv_len)
        else:
            k, v = key[kv_start:kv_start + kv_len], value[kv_start:kv_start + kv_len]
        q = query[q_start:q_start + q_len].to(work)
        k = k.to(work).repeat_interleave(group, dim=1)
        v = v.to(work).repeat_interleave(group, dim=1)
        o, l_ = _attend(q, k, v, float(scale), sparse_mode == 3, softmax_lse_flag)
        out[q_start:q_start + q_len] = o
        if lse is not None:
            lse[q_start:q_start + q_len, :, 0] = l_.to(torch.float32)
        q_start, kv_start = q_start + q_len, kv_start + kv_len
    if lse is None:
        lse = torch.empty(0, dtype=torch.float32, device=query.device)
    return out.to(query.dtype), lse
