"""Where an MoE layer's tokens and experts live under vLLM's parallel flags.

vLLM's ``FusedMoEParallelConfig`` (per layer) gives the layout:

- **no expert parallelism** (TP only): every rank holds all E experts, each sharded along
  the intermediate dim; every TP rank routes the same (replicated) tokens and vLLM's final
  TP all-reduce sums the partial results. The comm method runs on a single rank.
- **expert parallelism** (``enable_expert_parallel`` with TP and/or DP ranks): the EP group
  is every TP x DP rank; rank r owns experts ``[r*L, (r+1)*L)``. DP ranks route different
  tokens; TP ranks hold the *same* tokens, so each TP rank takes one chunk of them
  (:func:`tp_chunk`) before the comm method, and puts its chunk's result back into a zero
  ``(N, H)`` tensor afterwards (:func:`tp_unchunk`): vLLM's final TP all-reduce, which also
  sums the TP-sharded shared experts, assembles the full output. When vLLM already runs the
  MoE sequence-parallel (its model chunks the tokens) there is nothing to chunk.
- **DP without EP** (experts TP-sharded across DP ranks): not supported here.

Every EP rank must pick the same comm method each step (they run matching collectives):
:func:`max_tokens_per_rank` is the largest per-rank token count of the step, the same on
every rank, from vLLM's DP metadata when DP > 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MoEParallelLayout:
    """ep_size / ep_rank: the EP group (1 / 0 without EP); tp_chunks / tp_rank: how many
    chunks this rank's tokens are split into and which one it routes (1 / 0: no chunking);
    dp_size: DP ranks (their token counts may differ per step)."""

    ep_size: int = 1
    ep_rank: int = 0
    tp_chunks: int = 1
    tp_rank: int = 0
    dp_size: int = 1

    @classmethod
    def from_vllm(cls, moe_parallel_config, is_sequence_parallel: bool) -> MoEParallelLayout:
        """From vLLM's ``FusedMoEParallelConfig`` (``moe_config.moe_parallel_config``)."""
        cfg = moe_parallel_config
        if cfg.pcp_size > 1:
            raise NotImplementedError(
                f"vllm-ascend MoE: prefill context parallelism (pcp_size={cfg.pcp_size}) is "
                "not supported")
        if not cfg.use_ep:
            if cfg.dp_size > 1:
                raise NotImplementedError(
                    f"vllm-ascend MoE: data_parallel_size={cfg.dp_size} needs "
                    "enable_expert_parallel (experts TP-sharded across DP ranks are not "
                    "supported)")
            return cls()
        # vLLM flattens EP over (DP, TP): ep_rank = dp_rank * tp + tp_rank.
        tp = cfg.ep_size // cfg.dp_size
        chunks = 1 if is_sequence_parallel else tp
        return cls(ep_size=cfg.ep_size, ep_rank=cfg.ep_rank, tp_chunks=chunks,
                   tp_rank=cfg.ep_rank % tp if chunks > 1 else 0, dp_size=cfg.dp_size)


def chunk_rows(num_tokens: int, chunks: int) -> int:
    """Rows per chunk: ``ceil(num_tokens / chunks)`` (the last chunks are zero-padded)."""
    return -(-num_tokens // chunks)


def tp_chunk(x: torch.Tensor, chunks: int, rank: int) -> torch.Tensor:
    """Chunk ``rank`` of ``x (N, ...)`` split into ``chunks`` equal row blocks, the rows past
    N zero-filled: ``(ceil(N / chunks), ...)``."""
    if chunks == 1:
        return x
    rows = chunk_rows(x.shape[0], chunks)
    start = rank * rows
    part = x[start:start + rows]
    if part.shape[0] == rows:
        return part
    padded = x.new_zeros((rows,) + tuple(x.shape[1:]))
    padded[:part.shape[0]] = part
    return padded


def tp_unchunk(part: torch.Tensor, num_tokens: int, chunks: int, rank: int) -> torch.Tensor:
    """Inverse placement of :func:`tp_chunk`: ``(N, ...)`` zeros with ``part`` at its rows;
    summed over the ``chunks`` ranks this is the whole result."""
    if chunks == 1:
        return part
    out = part.new_zeros((num_tokens,) + tuple(part.shape[1:]))
    start = rank * part.shape[0]
    keep = max(0, min(part.shape[0], num_tokens - start))
    out[start:start + keep] = part[:keep]
    return out


def max_tokens_per_rank(layout: MoEParallelLayout, num_tokens: int,
                        tokens_across_dp: torch.Tensor | None = None,
                        cpu_group=None) -> int:
    """The largest token count any EP rank routes this step (the same on every rank).

    num_tokens: this rank's tokens before chunking. tokens_across_dp ``(DP,)``: vLLM's
    ``dp_metadata.num_tokens_across_dp_cpu`` (None without DP metadata). Without DP every
    EP rank is a TP rank holding the same tokens; with DP and no metadata, the counts are
    max-reduced over ``cpu_group`` (the EP group's CPU group).
    """
    mine = chunk_rows(num_tokens, layout.tp_chunks)
    if layout.dp_size == 1:
        return mine
    if tokens_across_dp is not None:
        counts = [int(c) for c in tokens_across_dp.tolist()]
        return max([mine] + [chunk_rows(c, layout.tp_chunks) for c in counts])
    if cpu_group is None:
        raise ValueError("max_tokens_per_rank: DP > 1 needs tokens_across_dp or cpu_group")
    import torch.distributed as dist

    t = torch.tensor([mine], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=cpu_group)
    return int(t.item())
