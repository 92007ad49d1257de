"""A series' prefetch ring: each layer's processed weights broadcast from their owner into a
ring of buffers ahead of use.

A series has ``L`` layers; group rank ``i % N`` stores layer ``i``. The forward of layer
``i`` first :meth:`SeriesRing.start` s the broadcast of layer ``(i + P) % L``
(``P = prefetch_step``; the last layers start the first ones of the next step: the ring
wraps), then :meth:`SeriesRing.wait` s for layer ``i``'s, then computes. In flight at any
time: layers ``i .. i + P``, so a rank needs a buffer for each of those it does not own
(at most ``P + 1``; :func:`slots_needed`). An owner broadcasts from its own parameters and
uses no buffer.

Started broadcasts form a FIFO; each buffer carries the layer index it holds. The checks
are made on state every rank of the group shares (the FIFO of started layers, the next
layer due), before any broadcast is posted, so all ranks fail at the same point with the
same collectives outstanding: ``start(j)`` with ``j`` not the next layer due or with
``P + 1`` broadcasts already in flight, and ``wait(i)`` with another layer at the head of
the FIFO (a step that skipped or repeated layers) raise :class:`RingOrderError` after
draining the started broadcasts: never a silent read of the wrong layer. A buffer tagged
with another layer than the one read from it is the same error.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vllm_ascend.device import mark_volatile_weights
from vllm_ascend.shared_weight.group import ShardingGroup


class RingOrderError(RuntimeError):
    """A sharded layer ran out of the order its ring was filled in."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a layer's processed form."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def slots_needed(num_layers: int, prefetch_step: int, owned: list[bool]) -> int:
    """Most non-owned layers among ``P + 1`` cyclically consecutive layers."""
    window = prefetch_step + 1
    return max(sum(not owned[(i + k) % num_layers] for k in range(window))
               for i in range(num_layers))


@dataclass
class _InFlight:
    layer: int
    slot: int | None  # None: this rank owns the layer (it sends)
    works: list


class SeriesRing:
    """The prefetch state of one series on one rank.

    ``own``: ``{layer: {name: tensor}}`` for the layers this rank stores (processed, what
    is broadcast); ``specs``: the processed form's tensors (identical on every layer and
    rank); ``device``: where the buffers live.
    """

    def __init__(self, name: str, num_layers: int, prefetch_step: int, group: ShardingGroup,
                 own: dict[int, dict[str, torch.Tensor]], specs: list[TensorSpec],
                 device: torch.device) -> None:
        self.name, self.num_layers, self.prefetch_step = name, num_layers, prefetch_step
        self.group, self.own, self.specs = group, own, specs
        owned = [group.owner(i) == group.rank for i in range(num_layers)]
        assert all(owned[i] == (i in own) for i in range(num_layers)), "own != owner map"
        n = slots_needed(num_layers, prefetch_step, owned)
        #: buffers ``[slot] -> {name: tensor}``; ``slot_layer[slot]``: the layer it holds
        #: (or is receiving), -1 before the first
        # Normal tensors even when built under inference mode: their version counters are
        # how derived-data caches learn that a broadcast rewrote them (wait()).
        with torch.inference_mode(False):
            self.slots = [{s.name: torch.empty(s.shape, dtype=s.dtype, device=device)
                           for s in specs} for _ in range(n)]
        # Every use finds another layer in a buffer: a backend must not prepack them.
        mark_volatile_weights(*(t for slot in self.slots for t in slot.values()))
        self.slot_layer = [-1] * n
        self._busy = [False] * n  # receiving, not yet waited on
        self._fifo: deque[_InFlight] = deque()
        self._next = 0  # the layer whose broadcast is due next
        self.broadcasts = 0
        self.bytes_received = 0
        #: seconds spent blocked in wait(): the part of the transfers compute did not hide
        self.wait_seconds = 0.0

    # -------------------------------------------------------------------- protocol

    def ahead(self, layer: int) -> int:
        """The layer whose broadcast layer ``layer``'s forward starts."""
        return (layer + self.prefetch_step) % self.num_layers

    def prime(self) -> None:
        """Start layers ``0 .. P-1`` (what the previous step's last layers would have)."""
        for layer in range(self.prefetch_step):
            self.start(layer)

    def start(self, layer: int) -> None:
        """Start the broadcast of ``layer`` from its owner (async)."""
        if layer != self._next:
            self._fail(f"the prefetch of layer {layer} is started but layer {self._next}'s is "
                       "due (a forward pass skipped or repeated a layer?)")
        if len(self._fifo) > self.prefetch_step:
            self._fail(f"the prefetch of layer {layer} is started with "
                       f"{len(self._fifo)} already in flight (layers "
                       f"{[f.layer for f in self._fifo]}, none waited on)")
        owner = self.group.owner(layer)
        src = self.group.global_rank(owner)
        if owner == self.group.rank:
            tensors, slot = self.own[layer], None
        else:
            free = [s for s, busy in enumerate(self._busy) if not busy]
            assert free, "slots_needed() covers every window of P + 1 consecutive layers"
            # Any free buffer is done with: start(i + P) runs at layer i's forward, after
            # layer i - 1 (whose output it takes) computed from its buffer.
            slot = free[0]
            tensors = self.slots[slot]
            self.slot_layer[slot], self._busy[slot] = layer, True
            self.bytes_received += sum(s.nbytes for s in self.specs)
        works = [dist.broadcast(tensors[s.name], src=src, group=self.group.group,
                                async_op=True) for s in self.specs]
        self._fifo.append(_InFlight(layer, slot, works))
        self._next = (layer + 1) % self.num_layers
        self.broadcasts += 1

    def wait(self, layer: int) -> int | None:
        """Block until ``layer``'s broadcast is done; its buffer's index (None: owned)."""
        if not self._fifo:
            self._fail(f"layer {layer} waits but no prefetch was started")
        head = self._fifo[0]
        if head.layer != layer:
            self._fail(f"layer {layer} waits but the oldest prefetch is layer {head.layer}")
        if head.slot is not None and self.slot_layer[head.slot] != layer:
            self._fail(f"layer {layer}'s buffer {head.slot} holds layer "
                       f"{self.slot_layer[head.slot]}")
        self._fifo.popleft()
        t0 = time.perf_counter()
        for w in head.works:
            w.wait()
        self.wait_seconds += time.perf_counter() - t0
        if head.slot is not None:
            # The collective wrote the buffer outside autograd: bump the version counters so
            # caches of data derived from a tensor (the reference backend's prepacked
            # weights, keyed on storage + version) see new contents, not the last layer's.
            for t in self.slots[head.slot].values():
                torch.autograd.graph.increment_version(t)
            self._busy[head.slot] = False
        return head.slot

    def tensors(self, slot: int, layer: int) -> dict[str, torch.Tensor]:
        """Buffer ``slot``'s tensors, checked to hold ``layer``."""
        if self.slot_layer[slot] != layer or self._busy[slot]:
            self._fail(f"buffer {slot} holds layer {self.slot_layer[slot]}"
                       f"{' (still receiving)' if self._busy[slot] else ''}, layer {layer} "
                       "expected")
        return self.slots[slot]

    def drain(self) -> None:
        """Wait for every started broadcast (before shutdown, or after an order error)."""
        while self._fifo:
            head = self._fifo.popleft()
            for w in head.works:
                w.wait()
            if head.slot is not None:
                self._busy[head.slot] = False

    @property
    def buffer_bytes(self) -> int:
        return sum(t.nbytes for slot in self.slots for t in slot.values())

    # -------------------------------------------------------------------- internals

    def _fail(self, what: str) -> None:
        self.drain()
        raise RingOrderError(
            f"layer_sharding series {self.name!r}: {what}; the ring is filled in layer "
            f"order (0..{self.num_layers - 1}, then 0 again), so every forward pass must "
            "run every layer of the series exactly once, in order")
