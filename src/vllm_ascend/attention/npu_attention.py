"""Paged decoder attention on Ascend: ``ops.npu_fused_infer_attention_score`` (FIA).

vLLM 0.32 interface: :class:`AscendAttentionBackend` names the impl and the metadata
builder; the attention layer calls :meth:`AscendAttentionImpl.do_kv_cache_update` (write
this step's K/V) and then :meth:`AscendAttentionImpl.forward` (attend over the cache).

**KV cache layout.** vLLM 0.32 has no ``get_kv_cache_shape``: its model runner allocates
one buffer and binds each layer a 4-D logical view ``(num_blocks, H_kv, block_size, 2*D)``
(K and V side by side in the last dim); :meth:`AscendAttentionBackend.supported_kv_cache_layouts`
asks for ``LBNHC`` (token-major pages). :func:`split_kv_cache` turns that into K and V views
``(num_blocks, block_size, H_kv, D)``. It also accepts the Ascend layout
``(2, num_blocks, block_size, H_kv, D)`` (:meth:`AscendAttentionBackend.get_kv_cache_shape`)
that an NPU model runner allocates: there K and V are contiguous and are handed to FIA as
the ``(num_blocks, block_size, H_kv*D)`` pages vllm-ascend uses. vLLM's packed view gives
strided K/V: the reference op accepts them; whether the device kernel does is unverified.

**KV write.** Plain ``index_put_`` at ``(slot // block_size, slot % block_size)``, in place
on the views (torch_npu's ``_npu_reshape_and_cache`` is not in our operator contract);
negative slots (vLLM's padding) are skipped.

**Mask.** Causal attention is FIA ``sparse_mode=3`` (bottom-right aligned) with the
compressed ``(2048, 2048)`` upper-triangular bool mask the kernel requires.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.kv_cache_interface import KVCacheLayout

from vllm_ascend.device import ops

BACKEND_NAME = "ASCEND"
#: Tokens per KV block when the user sets none (FIA pages: a multiple of 16, 128 advised).
DEFAULT_BLOCK_SIZE = 128
#: Side of the compressed causal mask FIA takes with sparse_mode 3.
COMPRESSED_MASK_SIZE = 2048
_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16")


def register_attention_backend() -> None:
    """Add ``ASCEND`` to vLLM's AttentionBackendEnum (idempotent).

    vLLM maps ``get_name()`` back to the enum (``AttentionBackendEnum[name]``) when it
    builds an attention layer, so the name must be a member; this is vLLM's documented
    way for out-of-tree backends (``register_backend("NAME", "module.Class")``).
    """
    if BACKEND_NAME not in AttentionBackendEnum.__members__:
        register_backend(BACKEND_NAME, f"{__name__}.AscendAttentionBackend")


@functools.lru_cache(maxsize=8)
def causal_mask(device: torch.device) -> torch.Tensor:
    """The compressed causal mask ``(2048, 2048)`` bool, True above the diagonal (masked)."""
    n = COMPRESSED_MASK_SIZE
    return torch.triu(torch.ones(n, n, dtype=torch.bool, device=device), diagonal=1)


def split_kv_cache(kv_cache: torch.Tensor, num_kv_heads: int,
                   head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V views ``(num_blocks, block_size, H_kv, D)`` of one layer's cache.

    Accepts vLLM 0.32's ``(num_blocks, H_kv, block_size, 2*D)`` or the Ascend
    ``(2, num_blocks, block_size, H_kv, D)``. Views share memory with ``kv_cache``.
    """
    if kv_cache.dim() == 5 and kv_cache.shape[0] == 2 and kv_cache.shape[3:] == (
            num_kv_heads, head_size):
        return kv_cache[0], kv_cache[1]
    if kv_cache.dim() == 4 and kv_cache.shape[1] == num_kv_heads and (
            kv_cache.shape[3] == 2 * head_size):
        key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
        return key_cache, value_cache
    raise ValueError(
        f"KV cache of shape {tuple(kv_cache.shape)} is neither vLLM's (num_blocks, "
        f"{num_kv_heads}, block_size, {2 * head_size}) nor Ascend's (2, num_blocks, "
        f"block_size, {num_kv_heads}, {head_size})")


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store token ``t``'s key/value ``(T, H_kv, D)`` at slot ``slot_mapping[t]``, in place.

    Slot ``s`` is page ``s // block_size``, row ``s % block_size`` of the
    ``(num_blocks, block_size, H_kv, D)`` caches. ``key`` may be longer than
    ``slot_mapping`` (padded batch); negative slots are padding and are skipped.
    """
    n = slot_mapping.shape[0]
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, key, value = slots[keep], key[:n][keep], value[:n][keep]
    else:
        key, value = key[:n], value[:n]
    block_size = key_cache.shape[1]
    index = (slots // block_size, slots % block_size)
    key_cache.index_put_(index, key.to(key_cache.dtype))
    value_cache.index_put_(index, value.to(value_cache.dtype))


def _fia_pages(cache: torch.Tensor) -> torch.Tensor:
    """FIA's page layout ``(num_blocks, block_size, H_kv*D)`` when the view allows it."""
    return cache.flatten(2) if cache.is_contiguous() else cache


@dataclass
class AscendAttentionMetadata:
    """Per-step metadata. B = requests, T = scheduled tokens."""

    num_actual_tokens: int
    max_query_len: int
    query_start_loc: torch.Tensor  # (B+1,) int32, device
    actual_seq_lengths_q: list[int]  # (B,) cumulative query ends (FIA TND convention)
    seq_lens: torch.Tensor  # (B,) KV length per request (context + new), device
    seq_lens_list: list[int]  # the same on the host (FIA wants host ints)
    block_table: torch.Tensor  # (B, max_blocks) int32 physical block ids
    slot_mapping: torch.Tensor  # (T,) int64 cache slot per token, -1 = padding
    causal: bool = True


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    metadata: AscendAttentionMetadata, *, num_heads: int, num_kv_heads: int,
                    scale: float) -> torch.Tensor:
    """Attention of query ``(T, N, D)`` (T = the metadata's last query end) over the
    paged caches ``(num_blocks, block_size, H_kv, D)``; returns ``(T, N, D)``."""
    causal = metadata.causal
    out, _ = ops.npu_fused_infer_attention_score(
        query.contiguous(), _fia_pages(key_cache), _fia_pages(value_cache),
        atten_mask=causal_mask(query.device) if causal else None,
        block_table=metadata.block_table,
        actual_seq_lengths=metadata.actual_seq_lengths_q,
        actual_seq_lengths_kv=metadata.seq_lens_list,
        num_heads=num_heads, num_key_value_heads=num_kv_heads, scale=scale,
        input_layout="TND", block_size=key_cache.shape[1], sparse_mode=3 if causal else 0)
    return out


class AscendAttentionMetadataBuilder(AttentionMetadataBuilder[AscendAttentionMetadata]):
    """Builds :class:`AscendAttentionMetadata` from vLLM's CommonAttentionMetadata.

    FIA takes mixed prefill/decode batches, so no batch reordering is needed.
    """

    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER
    reorder_batch_threshold: int | None = None

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> AscendAttentionMetadata:
        cm = common_attn_metadata
        if isinstance(cm.causal, torch.Tensor):
            raise NotImplementedError("per-request causal flags are not supported by the "
                                      "Ascend attention backend yet")
        num_reqs = cm.num_reqs
        seq_lens = cm.seq_lens[:num_reqs]
        return AscendAttentionMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            max_query_len=cm.max_query_len,
            query_start_loc=cm.query_start_loc[:num_reqs + 1],
            actual_seq_lengths_q=cm.query_start_loc_cpu[1:num_reqs + 1].tolist(),
            seq_lens=seq_lens,
            seq_lens_list=seq_lens.tolist(),  # one device->host copy per step
            block_table=cm.block_table_tensor[:num_reqs],
            slot_mapping=cm.slot_mapping[:cm.num_actual_tokens],
            causal=bool(cm.causal),
        )


class AscendAttentionImpl(AttentionImpl[AscendAttentionMetadata]):
    """Decoder self-attention: causal (or full), GQA, fp16/bf16 KV cache."""

    def __init__(self, num_heads: int, head_size: int, scale: float,
                 num_kv_heads: int | None = None, alibi_slopes: list[float] | None = None,
                 sliding_window: int | None = None, kv_cache_dtype: str = "auto",
                 logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None, **extra) -> None:
        unsupported = {
            "alibi_slopes": alibi_slopes, "sliding_window": sliding_window,
            "logits_soft_cap": logits_soft_cap or None,
            **{k: v for k, v in extra.items() if v is not None},
        }
        named = sorted(k for k, v in unsupported.items() if v is not None)
        if named:
            raise NotImplementedError(
                f"the Ascend attention backend does not support {', '.join(named)} yet")
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"attn_type={attn_type!r}: the Ascend attention "
                                      "backend supports decoder self-attention only")
        if kv_cache_dtype not in _KV_CACHE_DTYPES:
            raise NotImplementedError(f"kv_cache_dtype={kv_cache_dtype!r} is not supported on "
                                      f"Ascend yet; accepted: {', '.join(_KV_CACHE_DTYPES)}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide "
                             f"num_heads={self.num_heads}")
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def do_kv_cache_update(self, layer, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Write key/value ``(T, H_kv, D)`` into this layer's cache at ``slot_mapping``."""
        if kv_cache.numel() == 0:
            return
        key_cache, value_cache = split_kv_cache(kv_cache, self.num_kv_heads, self.head_size)
        write_kv_cache(key, value, key_cache, value_cache, slot_mapping)

    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: AscendAttentionMetadata | None,
                output: torch.Tensor, output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        """query ``(T, N, D)``; output ``(T, N, D)`` is written in place and returned."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the "
                                      "Ascend attention backend")
        if attn_metadata is None or kv_cache.numel() == 0:  # profiling / warm-up run
            return output
        lens = attn_metadata.actual_seq_lengths_q
        n = lens[-1] if lens else 0
        if n == 0:
            return output
        key_cache, value_cache = split_kv_cache(kv_cache, self.num_kv_heads, self.head_size)
        out = paged_attention(query[:n], key_cache, value_cache, attn_metadata,
                              num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                              scale=self.scale)
        output[:n].copy_(out.view(output[:n].shape))
        return output


class AscendAttentionBackend(AttentionBackend):
    """vLLM attention backend ``ASCEND`` (see the module docstring for the KV layout)."""

    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16]
    supported_kv_cache_dtypes: ClassVar[list] = list(_KV_CACHE_DTYPES)

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[AscendAttentionImpl]:
        return AscendAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[AscendAttentionMetadataBuilder]:
        return AscendAttentionMetadataBuilder

    @staticmethod
    def get_metadata_cls() -> type[AscendAttentionMetadata]:
        return AscendAttentionMetadata

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(16)]

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        return DEFAULT_BLOCK_SIZE

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        """Multiples of 16 up to 512 (FIA's documented range; unverified here)."""
        return list(range(16, 513, 16))

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        return (KVCacheLayout.LBNHC,)

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int, cache_dtype_str: str = "auto") -> tuple[int, ...]:
        """Ascend's own layout ``(2, num_blocks, block_size, H_kv, D)`` (K, V planes).

        vLLM 0.32 does not call this (its allocator binds the packed view described in
        the module docstring); an NPU model runner allocating separate K/V planes does.
        """
        return (2, num_blocks, block_size, num_kv_heads, head_size)


register_attention_backend()
