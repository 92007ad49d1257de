"""Rotary embedding on ``npu_rotary_mul`` (neox = "half", GPT-J = "interleave")."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

from vllm_ascend.device import ops


class AscendRotaryEmbedding(RotaryEmbedding):
    """``x_rot = x * cos + R(x) * sin`` on the first ``rotary_dim`` features of each head."""

    def _rotate(self, x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        heads = x.reshape(r1.shape[0], -1, self.head_size)
        mode = "half" if self.is_neox_style else "interleave"
        rot = ops.npu_rotary_mul(heads[..., : self.rotary_dim], r1, r2, rotary_mode=mode)
        if self.rotary_dim < self.head_size:
            rot = torch.cat((rot, heads[..., self.rotary_dim :]), dim=-1)
        return rot.reshape(x.shape)

    def forward_ascend(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cache = self._match_cos_sin_cache_dtype(query)
        cos, sin = cache.index_select(0, positions.flatten()).chunk(2, dim=-1)
        if self.is_neox_style:
            r1, r2 = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        else:
            r1, r2 = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        # (tokens, 1, rotary_dim): broadcast over heads.
        r1, r2 = r1.unsqueeze(1), r2.unsqueeze(1)
        if key is None:
            return self._rotate(query, r1, r2), None
        # One rotation over the query and key heads together: one kernel, not two.
        tokens = r1.shape[0]
        q_heads = query.reshape(tokens, -1, self.head_size)
        k_heads = key.reshape(tokens, -1, self.head_size)
        both = self._rotate(torch.cat((q_heads, k_heads), dim=1), r1, r2)
        q_rot, k_rot = both.split((q_heads.shape[1], k_heads.shape[1]), dim=1)
        return q_rot.reshape(query.shape), k_rot.reshape(key.shape)

    forward_cpu = forward_ascend
    forward_native = forward_ascend
    forward_oot = forward_ascend
