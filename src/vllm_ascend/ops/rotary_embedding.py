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
        query = self._rotate(query, r1, r2)
        if key is not None:
            key = self._rotate(key, r1, r2)
        return query, key

    forward_cpu = forward_ascend
    forward_native = forward_ascend
    forward_oot = forward_ascend
