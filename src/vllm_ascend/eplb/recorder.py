"""Expert load, recorded in the forward pass without a host sync or a collective.

The grouped matmul's group sizes after dispatch (``group_list``: rows per local physical
slot) are the tokens each slot computed: what the rank really did, replicas included.
Each step they are added, by the slot's logical expert, into row ``step % window`` of a
preallocated ``(window, L, E)`` tensor (``index_add_``: a device op, nothing read back).
At a rebalance interval :meth:`LoadRecorder.gather` weighs the window's rows into the load
estimate (``eplb/forecast.py``: their sum, or a trend) and all-gathers it over the EP
ranks: the only collective, once per interval.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from vllm_ascend.eplb.forecast import window_weights
from vllm_ascend.eplb.slots import LayerSlots


class LoadRecorder:
    """Window of per-step loads: ``loads (window, L, E)`` tokens per logical expert, and
    ``rank_tokens (window, L)`` tokens this rank's slots computed (for balancedness)."""

    def __init__(self, num_layers: int, num_experts: int, window: int,
                 device: torch.device | str = "cpu") -> None:
        self.window = window
        self.loads = torch.zeros(window, num_layers, num_experts, dtype=torch.int64,
                                 device=device)
        self.rank_tokens = torch.zeros(window, num_layers, dtype=torch.int64, device=device)
        self.row = 0
        self.active = False
        self.steps_recorded = 0
        # Host-side bookkeeping (no device read): the step each row holds, if recorded.
        self.row_step = np.full(window, -1, dtype=np.int64)
        self.row_recorded = np.zeros(window, dtype=bool)

    def begin_step(self, step: int, record: bool) -> None:
        """Start step ``step``: its row is cleared (so the window forgets it) and filled
        only when ``record`` (the step's kind matches ``collect``)."""
        self.row = step % self.window
        self.loads[self.row].zero_()
        self.rank_tokens[self.row].zero_()
        self.row_step[self.row] = step
        self.row_recorded[self.row] = record
        self.active = record
        self.steps_recorded += int(record)

    def end_step(self) -> None:
        self.active = False

    def record(self, layer_pos: int, slots: LayerSlots, group_list: torch.Tensor) -> None:
        """Add one layer's ``group_list`` (``(S_l,)`` rows per local slot) to this step."""
        if not self.active:
            return
        counts = group_list.reshape(-1)[:slots.local_slots].to(torch.int64)
        self.loads[self.row, layer_pos].index_add_(0, slots.local_logical, counts)
        self.rank_tokens[self.row, layer_pos] += counts.sum()

    def weights(self, estimate: str, horizon: float) -> np.ndarray:
        """``(window,)`` float64 weight of each row in the load estimate (0: not recorded)."""
        out = np.zeros(self.window)
        rows = np.nonzero(self.row_recorded)[0]
        if rows.size:
            ages = self.row_step[rows].max() - self.row_step[rows]
            out[rows] = window_weights(ages, estimate, horizon)
        return out

    def gather(self, group, ep_size: int, estimate: str = "window",
               horizon: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The window over all EP ranks: ``(loads (L, E) float64, rank_tokens (W, L))``.

        ``loads`` is the ``estimate`` (``eplb/forecast.py``) of the window, clipped at 0;
        ``rank_tokens`` the window's sum per rank. One all-gather over ``group``.
        """
        w = torch.from_numpy(self.weights(estimate, horizon)).to(self.loads.device)
        est = torch.tensordot(w, self.loads.to(torch.float64), dims=1)
        local = torch.cat([est.reshape(-1), self.rank_tokens.sum(0).to(torch.float64)])
        out = [torch.empty_like(local) for _ in range(ep_size)]
        dist.all_gather(out, local, group=group)
        stacked = torch.stack(out).cpu().numpy()  # (W, L*E + L)
        num_layers, num_experts = self.loads.shape[1:]
        loads = stacked[:, :num_layers * num_experts].sum(0).reshape(num_layers, num_experts)
        rank_tokens = stacked[:, num_layers * num_experts:].astype(np.int64)
        return np.maximum(loads, 0.0), rank_tokens
