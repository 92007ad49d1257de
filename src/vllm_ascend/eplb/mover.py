"""Moving expert weights between EP ranks while serving, one layer (or a few) per step.

For each layer of an accepted plan, :meth:`ExpertMover.start` posts the transfers
(``batch_isend_irecv`` over the EPLB process group: gloo on CPU, hccl on NPU) into fresh
staging buffers *before* the step's forward pass; :meth:`ExpertMover.finish` waits for
them *after* it, agrees with every EP rank that all of them arrived (one ``all_reduce``
of a flag), and only then copies the staged experts into their slots and swaps the
layer's maps. A transfer that fails or times out anywhere leaves the layer on its old
weights and maps on every rank, logged. With nothing to move, neither method does
anything: no collective and no sync in a step.

Every expert travels as one byte buffer holding all its tensors (weights, scales,
offsets, ``scale_bias``: :meth:`LayerSlots.pack`). Local moves (the source is this rank)
are staged by copy at start, so slots can be permuted in place.
"""

from __future__ import annotations

import datetime
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from vllm_ascend.eplb.slots import LayerSlots
from vllm_ascend.logger import logger


@dataclass
class LayerMove:
    """One layer going from its current placement to ``new`` ``(S,)`` via ``plan``."""

    slots: LayerSlots
    new: np.ndarray
    plan: object  # vllm_ascend.eplb.transfer.LayerTransferPlan
    tag: int = 0  # request id: keeps message tags of different plans apart


@dataclass
class _InFlight:
    moves: list[LayerMove]
    works: list = field(default_factory=list)
    staged: list[list[tuple[int, torch.Tensor]]] = field(default_factory=list)  # per move


class ExpertMover:
    """Applies :class:`LayerMove` s ``layers_per_step`` at a time (see the module docstring).

    group: the EPLB process group over the EP ranks (rank order = EP rank order);
    fail_next: test-only fault injection: the next ``finish`` on this rank reports failure.
    """

    def __init__(self, group, ep_rank: int, ep_size: int, layers_per_step: int,
                 timeout_s: float, on_commit=None) -> None:
        self.group = group
        self.ep_rank, self.ep_size = ep_rank, ep_size
        self.layers_per_step = layers_per_step
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.queue: deque[LayerMove] = deque()
        self.inflight: _InFlight | None = None
        self.on_commit = on_commit
        self.fail_next = False
        self.broken: str | None = None  # set when the group is unusable (a transfer timed out)
        self.committed = self.rejected = 0

    @property
    def idle(self) -> bool:
        return self.inflight is None and not self.queue

    def enqueue(self, moves: list[LayerMove]) -> None:
        self.queue.extend(moves)

    # -- one step ----------------------------------------------------------------------

    def start(self) -> None:
        """Before a forward pass: post the next layers' transfers (no-op when idle)."""
        if self.inflight is not None or not self.queue or self.broken:
            return
        moves = [self.queue.popleft() for _ in range(min(self.layers_per_step, len(self.queue)))]
        self.inflight = self._post(moves)

    def finish(self) -> None:
        """After a forward pass: wait, agree, commit (or keep the old placement)."""
        if self.inflight is None:
            return
        inflight, self.inflight = self.inflight, None
        ok, why = self._wait(inflight)
        if self.fail_next:
            self.fail_next, ok, why = False, False, "fault injected (VLLM_ASCEND_EPLB_FAULT)"
        agreed = self._agree(ok)
        layers = ", ".join(str(m.slots.layer_index) for m in inflight.moves)
        if not agreed:
            self.rejected += len(inflight.moves)
            logger.warning("EPLB: expert transfer for layer(s) %s failed (%s); the layer(s) "
                           "keep their old experts and maps", layers,
                           why or "failed on another EP rank")
            return
        for move, staged in zip(inflight.moves, inflight.staged):
            for local_slot, buf in staged:
                move.slots.unpack_into(local_slot, buf)
            move.slots.set_placement(move.new)
            self.committed += 1
            if self.on_commit is not None:
                self.on_commit(move)

    def run_blocking(self, moves: list[LayerMove]) -> None:
        """All ``moves`` now, waiting for each (start-up fill, stop-the-world mode)."""
        saved, self.layers_per_step = self.layers_per_step, max(len(moves), 1)
        try:
            self.enqueue(moves)
            while self.queue and not self.broken:
                self.start()
                self.finish()
        finally:
            self.layers_per_step = saved

    # -- internals ---------------------------------------------------------------------

    def _post(self, moves: list[LayerMove]) -> _InFlight:
        inflight = _InFlight(moves)
        ops = []
        me = self.ep_rank
        for move in moves:
            slots, plan = move.slots, move.plan
            k = slots.local_slots
            staged = []
            for dst, src_rank, src_slot in zip(plan.dst_slot.tolist(), plan.src_rank.tolist(),
                                               plan.src_slot.tolist()):
                dst_rank = dst // k
                if dst_rank == me and src_rank == me:      # local: stage a copy now
                    staged.append((dst - me * k, slots.pack(src_slot - me * k)))
                elif dst_rank == me:
                    buf = slots.empty_buffer()
                    ops.append(dist.P2POp(dist.irecv, buf, self._peer(src_rank), self.group,
                                          tag=self._tag(move, dst)))
                    staged.append((dst - me * k, buf))
                elif src_rank == me:
                    ops.append(dist.P2POp(dist.isend, slots.pack(src_slot - me * k),
                                          self._peer(dst_rank), self.group,
                                          tag=self._tag(move, dst)))
            inflight.staged.append(staged)
        if ops:
            try:
                inflight.works = dist.batch_isend_irecv(ops)
            except RuntimeError as e:
                inflight.works = [e]
        return inflight

    def _wait(self, inflight: _InFlight) -> tuple[bool, str | None]:
        for work in inflight.works:
            if isinstance(work, Exception):
                return False, f"posting failed: {work}"
            try:
                work.wait(timeout=self.timeout)
            except RuntimeError as e:
                # A timed-out gloo pair is closed for good: this group cannot carry more.
                self.broken = f"transfer timed out or failed: {str(e).splitlines()[0][:200]}"
                return False, self.broken
        return True, None

    def _agree(self, ok: bool) -> bool:
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        try:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        except RuntimeError as e:
            self.broken = f"EPLB process group failed: {str(e).splitlines()[0][:200]}"
            return False
        return bool(flag.item())

    def _peer(self, ep_rank: int) -> int:
        """Global rank of EP rank ``ep_rank`` (P2P ops take global ranks)."""
        return dist.get_global_rank(self.group, ep_rank)

    @staticmethod
    def _tag(move: LayerMove, dst_slot: int) -> int:
        # unique per (plan, layer, destination slot) within the int32 range
        return ((move.tag % 64) * 256 + move.slots.layer_index % 256) * 65536 + dst_slot % 65536
