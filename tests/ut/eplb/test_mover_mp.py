"""Slots, recorder and mover on real gloo process groups (2 and 4 ranks).

Each rank holds a stand-in for vLLM's ``RoutedExperts``: per-expert tensors named like a
quantised scheme's (float weight, int8 weight, fp32 scale, int32 ``scale_bias``), filled
from the logical expert id, loaded linearly (rank r: experts ``[r*E/W, (r+1)*E/W)``) as
vLLM does. The scenario, in one spawned group per world size:

1. expand to ``S/W`` slots and fill the start-up placement (blocking);
2. a random valid new placement, moved layer by layer with ``start`` / ``finish``;
3. a new placement whose transfer fails on rank 0 (fault injection): every rank keeps the
   old weights and maps;
4. the recorder: per-slot group sizes -> logical loads, gathered over the ranks.

After each stage every rank saves what its slots hold; the parent checks every slot's
tensors against the expert the placement names (exact: the bytes must be the checkpoint's).
"""

from __future__ import annotations

import datetime
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.procs import free_port
from vllm_ascend.eplb.placement import validate_placement

E, H, I = 8, 4, 6
LAYERS = (3, 5)  # model layer indices of the two MoE layers


def expert_tensors(expert: int) -> dict[str, torch.Tensor]:
    """What the checkpoint holds for one logical expert (exactly reproducible)."""
    g = torch.Generator().manual_seed(1000 + expert)
    return {
        "w13_weight": torch.randn(H, 2 * I, generator=g) + expert,
        "w13_weight_int8": torch.randint(-128, 128, (2 * I, H), generator=g, dtype=torch.int8),
        "w2_weight_scale": torch.rand(H, 1, generator=g),
        "w13_scale_bias": torch.full((2 * I,), expert, dtype=torch.int32),
    }


class FakeExperts(torch.nn.Module):
    """Per-expert parameters for experts ``[r*E/W, (r+1)*E/W)``, plus a global one."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        own = E // world
        per = [expert_tensors(rank * own + j) for j in range(own)]
        for name in per[0]:
            data = torch.stack([p[name] for p in per])
            self.register_parameter(name, torch.nn.Parameter(data, requires_grad=False))
        # not per expert: must never be touched
        self.e_score_correction_bias = torch.nn.Parameter(torch.arange(E, dtype=torch.float32),
                                                          requires_grad=False)


def random_placement(rng, slots: int, world: int) -> np.ndarray:
    """A valid (S,) placement: every expert once, the rest random without duplicates."""
    while True:
        row = np.concatenate([rng.permutation(E), rng.integers(0, E, slots - E)])
        rng.shuffle(row)
        if not validate_placement(row, E, world, num_slots=slots):
            return row


def snapshot(layers) -> list[dict]:
    return [{"placement": s.placement.copy(),
             "tensors": {n: p.detach().clone() for n, p in s.expert_tensors().items()},
             "counts": s.counts.clone(), "replicas": s.replicas.clone(),
             "bias": s.module.e_score_correction_bias.detach().clone()} for s in layers]


def _worker(rank: int, world: int, port: int, redundant: int, out: str) -> None:
    from vllm_ascend.eplb.mover import ExpertMover, LayerMove
    from vllm_ascend.eplb.recorder import LoadRecorder
    from vllm_ascend.eplb.slots import LayerSlots, linear_placement
    from vllm_ascend.eplb.transfer import plan_layer

    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=60))
        group = dist.new_group(list(range(world)), backend="gloo")
        slots_n = E + redundant
        layers = [LayerSlots(f"model.layers.{i}.mlp.experts", FakeExperts(rank, world), E,
                             slots_n, rank, world) for i in LAYERS]
        for s in layers:
            s.expand()
        mover = ExpertMover(group, rank, world, layers_per_step=1, timeout_s=30)
        start = linear_placement(E, world, slots_n)
        mover.run_blocking([LayerMove(s, start, plan_layer(s.placement, start, world))
                            for s in layers])
        result["start"] = snapshot(layers)

        rng = np.random.default_rng(7)  # same on every rank
        news = [random_placement(rng, slots_n, world) for _ in layers]
        mover.enqueue([LayerMove(s, n, plan_layer(s.placement, n, world), tag=1)
                       for s, n in zip(layers, news)])
        steps = 0
        while not mover.idle:
            mover.start()   # before the forward pass
            mover.finish()  # after it
            steps += 1
        result["moved"] = snapshot(layers)
        result["steps"] = steps

        bad = random_placement(rng, slots_n, world)
        mover.fail_next = rank == 0
        mover.enqueue([LayerMove(layers[0], bad, plan_layer(layers[0].placement, bad, world),
                                 tag=2)])
        mover.start()
        mover.finish()
        result["failed"] = snapshot(layers)
        result["rejected"], result["committed"] = mover.rejected, mover.committed

        rec = LoadRecorder(len(layers), E, window=4)
        for step in range(6):
            rec.begin_step(step, record=step != 2)
            for pos, s in enumerate(layers):
                counts = torch.arange(s.local_slots, dtype=torch.int64) + 10 * rank + step
                rec.record(pos, s, counts)
            rec.end_step()
        loads, rank_tokens = rec.gather(group, world)
        result["loads"], result["rank_tokens"] = loads, rank_tokens
        result["trend"] = rec.gather(group, world, "trend", 2.0)[0]
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - reported to the parent
        result["error"] = traceback.format_exc()
    torch.save(result, f"{out}.{rank}")


def check_slots(snaps: list[list[dict]], world: int, slots_n: int) -> None:
    """Every rank's every slot holds exactly the tensors of the expert its placement names,
    and every rank agrees on the placement."""
    per = slots_n // world
    for pos in range(len(LAYERS)):
        placement = snaps[0][pos]["placement"]
        for rank in range(world):
            snap = snaps[rank][pos]
            assert np.array_equal(snap["placement"], placement), "ranks disagree"
            assert torch.equal(snap["bias"], torch.arange(E, dtype=torch.float32))
            for j in range(per):
                want = expert_tensors(int(placement[rank * per + j]))
                for name, t in snap["tensors"].items():
                    assert torch.equal(t[j], want[name]), (rank, j, name)
        counts = snaps[0][pos]["counts"].numpy()
        assert np.array_equal(counts, np.bincount(placement, minlength=E))
        reps = snaps[0][pos]["replicas"].numpy()
        for e in range(E):
            assert sorted(reps[e][reps[e] >= 0].tolist()) == \
                np.nonzero(placement == e)[0].tolist()


@pytest.mark.parametrize("world, redundant", [(2, 2), (4, 4), (2, 0)])
def test_fill_move_fail_record(tmp_path, world, redundant):
    out = str(tmp_path / "r")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, redundant, out))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]
    for r in results:
        assert "error" not in r, r["error"]
    slots_n = E + redundant
    check_slots([r["start"] for r in results], world, slots_n)
    check_slots([r["moved"] for r in results], world, slots_n)
    assert results[0]["steps"] == len(LAYERS)  # one layer per step
    # the injected failure: nothing changed anywhere, on every rank
    check_slots([r["failed"] for r in results], world, slots_n)
    for r in results:
        assert np.array_equal(r["failed"][0]["placement"], r["moved"][0]["placement"])
        assert r["rejected"] == 1 and r["committed"] == len(LAYERS) * 2
    # recorder: window 4 keeps steps 2..5 of 0..5, step 2 not recorded
    per = slots_n // world
    placement = [results[0]["failed"][pos]["placement"] for pos in range(len(LAYERS))]
    per_step = np.zeros((3, len(LAYERS), E))
    want_ranks = np.zeros((world, len(LAYERS)))
    for i, step in enumerate((3, 4, 5)):
        for rank in range(world):
            counts = np.arange(per) + 10 * rank + step
            for pos in range(len(LAYERS)):
                np.add.at(per_step[i, pos], placement[pos][rank * per:(rank + 1) * per], counts)
                want_ranks[rank, pos] += counts.sum()
    want = per_step.sum(axis=0)
    # trend: the least-squares line through steps 3, 4, 5, 2 steps past step 5, x 3 rows
    slope, intercept = np.polyfit([3.0, 4.0, 5.0], per_step.reshape(3, -1), 1)
    trend = np.maximum(3 * (intercept + slope * 7.0), 0).reshape(want.shape)
    for r in results:
        assert np.array_equal(r["loads"], want)
        assert np.array_equal(r["rank_tokens"], want_ranks)
        np.testing.assert_allclose(r["trend"], trend, rtol=1e-9, atol=1e-6)
