"""Reference MC2 ops (npu_moe_distribute_dispatch / _combine) and the all_to_all_v under them.

Multi-process: one spawned 2-rank gloo group runs every case; the parent rebuilds each
rank's inputs and checks dispatch's outputs against the documented layout (rows grouped
by local expert, then source rank, then token), the combine round trip
``out[t] = sum_k s[t,k] * f_e(x[t])`` for a per-expert map ``f_e(row) = (e + 1) * row``,
and quant_mode=2 against ``npu_dynamic_quant`` of the rows. Argument errors that need no
peer are checked in this process.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.distributed as dist

from tests.ut.moe.test_comm_methods import run_in_gloo_group
from vllm_ascend.device.reference import mc2
from vllm_ascend.device.reference.quant import npu_dynamic_quant

WORLD, EXPERTS, K, H = 2, 6, 2, 8
LOCAL = EXPERTS // WORLD

#: case -> (tokens per rank, dispatch options). Expert 2 (rank 0) and 5 (rank 1) are never
#: chosen, so each rank has a local expert without tokens.
CASES = {
    "counts": ([5, 3], {}),
    "cumulative": ([4, 2], {"expert_token_nums_type": 0}),
    "rank1_empty": ([4, 0], {}),
    "masked_shared": ([5, 4], {"mask": True, "shared": True}),
    "quant": ([5, 3], {"quant_mode": 2}),
    "quant_smooth": ([3, 4], {"quant_mode": 2, "smooth": True}),
}


def inputs(name: str, rank: int) -> dict:
    tokens, opts = CASES[name]
    n = tokens[rank]
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) * 4 + rank)
    pool = torch.tensor([0, 1, 3, 4])  # never 2 or 5
    ids = torch.stack([pool[torch.randperm(4, generator=g)[:K]] for _ in range(n)]) \
        if n else torch.zeros(0, K, dtype=torch.int64)
    out = {
        "x": torch.randn(n, H, generator=g),
        "ids": ids.to(torch.int32),
        "weights": torch.rand(n, K, generator=g),
        "mask": torch.arange(n) % 2 == 0 if opts.get("mask") else None,
        "shared": torch.randn(n, H, generator=g) if opts.get("shared") else None,
        "smooth": torch.rand(EXPERTS, H, generator=g) + 0.5 if opts.get("smooth") else None,
    }
    return out


def _rows_to_float(expand_x, dynamic_scales):
    return expand_x.float() * dynamic_scales[:, None] if expand_x.dtype == torch.int8 \
        else expand_x


def run_cases(rank: int, world: int, payload) -> dict:
    from vllm_ascend.distributed.all_to_all import all_to_all_v

    group = dist.group.WORLD
    mc2.register_group("ep", group)
    out: dict = {}
    for name, (_, opts) in CASES.items():
        d = inputs(name, rank)
        res = mc2.npu_moe_distribute_dispatch(
            d["x"], d["ids"], "ep", WORLD, rank, EXPERTS, scales=d["smooth"],
            x_active_mask=d["mask"], expert_scales=d["weights"],
            quant_mode=opts.get("quant_mode", 0),
            expert_token_nums_type=opts.get("expert_token_nums_type", 1),
        )
        expand_x, scales, expand_idx, token_nums, ep_recv, tp_recv, expand_scales = res
        counts = token_nums if opts.get("expert_token_nums_type", 1) == 1 else \
            torch.diff(token_nums, prepend=token_nums.new_zeros(1))
        expert_of_row = rank * LOCAL + torch.repeat_interleave(torch.arange(LOCAL), counts)
        y = _rows_to_float(expand_x, scales) * (expert_of_row + 1).float()[:, None]
        combined = mc2.npu_moe_distribute_combine(
            y, d["ids"], expand_idx, ep_recv, d["weights"], "ep", WORLD, rank, EXPERTS,
            tp_send_counts=tp_recv, x_active_mask=d["mask"], expand_scales=expand_scales,
            shared_expert_x=d["shared"],
        )
        out[name] = {"dispatch": res, "combine": combined}
    # all_to_all_v directly: uneven counts with zeros, counts exchanged or given.
    send = [[2, 0], [1, 3]][rank]
    rows = torch.arange(sum(send) * 3, dtype=torch.float64).view(-1, 3) + 100 * rank
    out["a2av"] = all_to_all_v(rows, send, group)
    out["a2av_int8_1d"] = all_to_all_v(torch.tensor([rank, -rank], dtype=torch.int8), [1, 1],
                                       group, recv_counts=[1, 1])
    errors = {
        "ep_world_size": lambda: mc2.npu_moe_distribute_dispatch(
            torch.zeros(1, H), torch.zeros(1, K, dtype=torch.int32), "ep", 3, rank, 6),
        "ep_rank_id": lambda: mc2.npu_moe_distribute_dispatch(
            torch.zeros(1, H), torch.zeros(1, K, dtype=torch.int32), "ep", WORLD, 1 - rank, 6),
        "a2av_sum": lambda: all_to_all_v(torch.zeros(3, 2), [1, 1], group),
    }
    for name, thunk in errors.items():
        try:
            thunk()
            out[("err", name)] = "no error"
        except ValueError as e:
            out[("err", name)] = str(e)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_in_gloo_group(WORLD, run_cases, None, tmp_path_factory.mktemp("mc2"))


def expected_layout(name: str, dest: int):
    """Rows rank ``dest`` receives, in order: [(source rank, token, k, expert)]."""
    order = []
    for e in range(dest * LOCAL, (dest + 1) * LOCAL):
        for src in range(WORLD):
            d = inputs(name, src)
            for t in range(d["x"].shape[0]):
                if d["mask"] is not None and not d["mask"][t]:
                    continue
                for k in range(K):
                    if int(d["ids"][t, k]) == e:
                        order.append((src, t, k, e))
    return order


def expected_rows(name: str, layout):
    """(rows as sent, their int8 values and scales when quantised, weights)."""
    opts = CASES[name][1]
    rows, weights = [], []
    for src, t, k, e in layout:
        d = inputs(name, src)
        row = d["x"][t]
        if d["smooth"] is not None:
            row = row * d["smooth"][e]
        rows.append(row)
        weights.append(d["weights"][t, k])
    rows = torch.stack(rows) if rows else torch.zeros(0, H)
    q = npu_dynamic_quant(rows) if opts.get("quant_mode") == 2 and rows.shape[0] else None
    return rows, q, torch.tensor(weights, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_dispatch_groups_rows_by_local_expert(results, name):
    opts = CASES[name][1]
    for rank in range(WORLD):
        (expand_x, scales, expand_idx, token_nums, ep_recv, tp_recv,
         expand_scales) = results[rank][name]["dispatch"]
        layout = expected_layout(name, rank)
        rows, q, weights = expected_rows(name, layout)
        counts = torch.bincount(torch.tensor([e for *_, e in layout], dtype=torch.int64)
                                - rank * LOCAL, minlength=LOCAL)
        assert counts[-1] == 0  # a local expert without tokens
        if opts.get("quant_mode") == 2:
            assert expand_x.dtype == torch.int8 and scales.dtype == torch.float32
            if q is not None:
                assert torch.equal(expand_x, q[0]) and torch.equal(scales, q[1])
        else:
            assert torch.equal(expand_x, rows) and scales.numel() == 0
        want_nums = counts.cumsum(0) if opts.get("expert_token_nums_type") == 0 else counts
        assert token_nums.dtype == torch.int64 and torch.equal(token_nums, want_nums)
        per_block = torch.zeros(WORLD, LOCAL, dtype=torch.int32)
        for src, _, _, e in layout:
            per_block[src, e - rank * LOCAL] += 1
        assert torch.equal(ep_recv, per_block.reshape(-1))
        assert tp_recv.numel() == 0
        assert torch.equal(expand_scales, weights)
        # expand_idx: a pair's position in its sender's (expert, token)-ordered send buffer.
        d = inputs(name, rank)
        flat = d["ids"].reshape(-1).long()
        active = torch.ones_like(flat, dtype=torch.bool) if d["mask"] is None \
            else d["mask"].repeat_interleave(K)
        sent = sorted((int(flat[f]), f) for f in range(flat.numel()) if active[f])
        want_idx = torch.full((flat.numel(),), -1, dtype=torch.int32)
        for pos, (_, f) in enumerate(sent):
            want_idx[f] = pos
        assert torch.equal(expand_idx, want_idx)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_combine_round_trip(results, name):
    for rank in range(WORLD):
        d = inputs(name, rank)
        got = results[rank][name]["combine"]
        want = torch.zeros(d["x"].shape, dtype=torch.float64)
        quant = CASES[name][1].get("quant_mode") == 2
        for t in range(d["x"].shape[0]):
            if d["mask"] is not None and not d["mask"][t]:
                continue
            for k in range(K):
                e = int(d["ids"][t, k])
                row = d["x"][t] if d["smooth"] is None else d["x"][t] * d["smooth"][e]
                if quant:
                    q, s = npu_dynamic_quant(row[None])
                    row = q[0].float() * s
                want[t] += float(d["weights"][t, k]) * (e + 1) * row.double()
        if d["shared"] is not None:
            want += d["shared"].double()
        assert got.dtype == torch.float32 and got.shape == d["x"].shape
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        if d["mask"] is not None:  # masked tokens get only the shared expert
            off = ~d["mask"]
            assert torch.equal(got[off], d["shared"][off])


@pytest.mark.slow
def test_all_to_all_v(results):
    sends = [[2, 0], [1, 3]]
    rows = [torch.arange(sum(s) * 3, dtype=torch.float64).view(-1, 3) + 100 * r
            for r, s in enumerate(sends)]
    for dest in range(WORLD):
        pieces = []
        for src in range(WORLD):
            start = sum(sends[src][:dest])
            pieces.append(rows[src][start:start + sends[src][dest]])
        got, recv = results[dest]["a2av"]
        assert recv == [sends[src][dest] for src in range(WORLD)]
        assert torch.equal(got, torch.cat(pieces))
        got8, recv8 = results[dest]["a2av_int8_1d"]
        assert recv8 == [1, 1] and got8.dtype == torch.int8
        assert got8.tolist() == [[0, 1], [0, -1]][dest]  # element dest of each source


@pytest.mark.slow
def test_errors_needing_the_group(results):
    for rank in range(WORLD):
        assert "ep_world_size=3 but group 'ep' has 2 ranks" in results[rank][("err",
                                                                              "ep_world_size")]
        assert f"ep_rank_id={1 - rank} but this process is rank {rank}" in \
            results[rank][("err", "ep_rank_id")]
        assert "send_counts [1, 1] sum to 2, input has 3 rows" in results[rank][("err",
                                                                                 "a2av_sum")]


# ------------------------------------------------------------------- in-process checks


@pytest.fixture
def fake_groups(monkeypatch):
    """An isolated group registry holding two stand-in groups."""
    import weakref

    class Group:  # weak-referenceable stand-in
        pass

    groups = {"hccl_ep_a": Group(), "hccl_ep_b": Group()}
    monkeypatch.setattr(mc2, "_GROUPS", weakref.WeakValueDictionary(groups))
    return groups


def test_unknown_group_lists_registered_names(fake_groups):
    with pytest.raises(ValueError) as err:
        mc2.npu_moe_distribute_dispatch(torch.zeros(2, H), torch.zeros(2, K, dtype=torch.int32),
                                        "hccl_ep_z", 2, 0, 4)
    msg = str(err.value)
    assert "group_ep='hccl_ep_z' is not a registered process group" in msg
    assert "registered: 'hccl_ep_a', 'hccl_ep_b'" in msg and "register_group" in msg


def test_register_group_guards_names(fake_groups):
    mc2.register_group("hccl_ep_a", fake_groups["hccl_ep_a"])  # same group: no-op
    with pytest.raises(ValueError, match="already registered for another process group"):
        mc2.register_group("hccl_ep_a", fake_groups["hccl_ep_b"])
    with pytest.raises(ValueError, match="non-empty string"):
        mc2.register_group("", fake_groups["hccl_ep_a"])
    assert mc2.lookup_group("hccl_ep_b") is fake_groups["hccl_ep_b"]


def _dispatch(**kw):
    args = dict(x=torch.zeros(2, H), expert_ids=torch.zeros(2, K, dtype=torch.int32),
                group_ep="hccl_ep_a", ep_world_size=2, ep_rank_id=0, moe_expert_num=4)
    args.update(kw)
    return mc2.npu_moe_distribute_dispatch(**args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.zeros(2, 3, H)), r"x must be 2-D \(BS, H\)"),
        (dict(expert_ids=torch.zeros(3, K, dtype=torch.int32)), r"expert_ids must be \(BS=2, K\)"),
        (dict(expert_ids=torch.zeros(2, K)), r"expert_ids must be an integer tensor"),
        (dict(expert_ids=torch.full((2, K), 4, dtype=torch.int32)),
         r"expert_ids values must be in \[0, moe_expert_num=4\)"),
        (dict(expert_scales=torch.zeros(2, K + 1)), r"expert_scales must have shape \(2, 2\)"),
        (dict(x_active_mask=torch.ones(3, dtype=torch.bool)), r"x_active_mask must have shape"),
        (dict(quant_mode=1), r"quant_mode=1; accepted: 0 \(none\), 2"),
        (dict(scales=torch.ones(4, H)),
         r"scales \(smooth factors\) are only used with quant_mode=2"),
        (dict(quant_mode=2, scales=torch.ones(3, H)), r"scales must have shape \(4, 8\)"),
        (dict(expert_token_nums_type=2), r"expert_token_nums_type=2"),
        (dict(tp_world_size=2, group_tp="tp"), r"the reference has no TP leg"),
        (dict(shared_expert_rank_num=1), r"shared_expert_rank_num=1"),
        (dict(moe_expert_num=5),
         r"moe_expert_num=5 must be a positive multiple of ep_world_size=2"),
    ],
)
def test_dispatch_argument_errors(fake_groups, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _dispatch(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(expand_x=torch.zeros(4)), r"expand_x must be 2-D"),
        (dict(expert_ids=torch.zeros(2, K)), r"expert_ids must be an integer tensor"),
        (dict(expand_idx=torch.zeros(3, dtype=torch.int32)), r"expand_idx must have BS\*K=4"),
        (dict(expert_scales=torch.zeros(2, 1)), r"expert_scales must have shape \(2, 2\)"),
        (dict(shared_expert_x=torch.zeros(2, H + 1)), r"shared_expert_x must have shape \(2, 8\)"),
        (dict(group_list=torch.zeros(2)), r"group_list is reserved"),
        (dict(comm_quant_mode=2), r"comm_quant_mode=2"),
        (dict(ep_send_counts=torch.zeros(3, dtype=torch.int32)),
         r"ep_send_counts must have W\*L=4"),
    ],
)
def test_combine_argument_errors(fake_groups, kwargs, match):
    args = dict(expand_x=torch.zeros(0, H), expert_ids=torch.zeros(2, K, dtype=torch.int32),
                expand_idx=torch.zeros(4, dtype=torch.int32),
                ep_send_counts=torch.zeros(4, dtype=torch.int32),
                expert_scales=torch.zeros(2, K), group_ep="hccl_ep_a", ep_world_size=2,
                ep_rank_id=0, moe_expert_num=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mc2.npu_moe_distribute_combine(**args)
