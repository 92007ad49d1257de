"""all_gatherv / reduce_scatterv on a real multi-process gloo group (2 and 4 ranks).

Every case runs inside ONE spawned group per world size (spawning is the slow part):
each rank builds deterministic inputs from the case name and its rank, runs the
collective, and saves what it got (or the error it raised) with ``torch.save``.
The parent recomputes each rank's inputs and checks against a single-process
reference: concatenation in rank order (all_gatherv), sum then slice (reduce_scatterv).

Error cases come last in the worker: they raise before any communication, so a
validation bug cannot desynchronise the collectives of the other cases.
"""

from __future__ import annotations

import datetime
import re
import traceback
import zlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZES = (2, 4)

#: Per-rank extents along the gathered / scattered dim; a rank with 0 rows in each.
UNEVEN = {2: [3, 0], 4: [2, 0, 5, 1]}
EQUAL = {2: [2, 2], 4: [2, 2, 2, 2]}
ZERO = {2: [0, 0], 4: [0, 0, 0, 0]}

#: all_gatherv cases: dim, dtype, shape of rank r's tensor given its extent n, sizes table,
#: and whether sizes is passed (False: sizes=None, equal extents).
AG_CASES = {
    "dim0_uneven_f32": (0, torch.float32, lambda n: (n, 3), UNEVEN, True),
    "dimlast_uneven_i64": (-1, torch.int64, lambda n: (2, 4, n), UNEVEN, True),
    "middle_dim_uneven_i32": (1, torch.int32, lambda n: (2, n, 3), UNEVEN, True),
    "neg_middle_dim_uneven_f64": (-2, torch.float64, lambda n: (3, n, 2), UNEVEN, True),
    "sizes_none_dim0_f64": (0, torch.float64, lambda n: (n, 2, 2), EQUAL, False),
    "sizes_none_dimlast_i32": (-1, torch.int32, lambda n: (3, n), EQUAL, False),
    "one_d_uneven_f16": (0, torch.float16, lambda n: (n,), UNEVEN, True),
    "all_ranks_empty_f32": (0, torch.float32, lambda n: (n, 4), ZERO, True),
}

#: reduce_scatterv cases: dim, dtype, shape of every rank's input given the total extent,
#: sizes table, whether sizes is passed.
RS_CASES = {
    "dimlast_uneven_f32": (-1, torch.float32, lambda t: (3, t), UNEVEN, True),
    "dim0_uneven_i64": (0, torch.int64, lambda t: (t, 2), UNEVEN, True),
    "middle_dim_uneven_i32": (1, torch.int32, lambda t: (2, t, 3), UNEVEN, True),
    "neg_middle_dim_uneven_f64": (-2, torch.float64, lambda t: (2, t, 3), UNEVEN, True),
    "sizes_none_dimlast_f64": (-1, torch.float64, lambda t: (2, t), EQUAL, False),
    "sizes_none_dim0_i64": (0, torch.int64, lambda t: (t, 3), EQUAL, False),
}

#: all_gatherv of a list: each element gathered along dim 0 with the same sizes.
LIST_CASE = "list_dim0_uneven"


def make_tensor(case: str, rank: int, shape, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(case.encode()) * 16 + rank)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 10).to(dtype)
    return torch.randint(-1000, 1000, shape, generator=g, dtype=torch.int64).to(dtype)


def list_inputs(rank: int, n: int) -> list[torch.Tensor]:
    return [
        make_tensor(LIST_CASE + "/a", rank, (n, 2), torch.float32),
        make_tensor(LIST_CASE + "/b", rank, (n,), torch.int64),
    ]


def error_cases(rank: int, world: int):
    """name -> thunk calling a collective with bad arguments (identical on every rank)."""
    from vllm_ascend.distributed.variable_collectives import all_gatherv, reduce_scatterv

    g = dist.group.WORLD
    neg = [1, -1] + [1] * (world - 2)
    return {
        "ag_sizes_too_long": lambda: all_gatherv(torch.zeros(1, 2), g, 0, [1] * (world + 1)),
        "ag_sizes_too_short": lambda: all_gatherv(torch.zeros(1, 2), g, 0, [1] * (world - 1)),
        "ag_sizes_negative": lambda: all_gatherv(torch.zeros(1, 2), g, 0, neg),
        "ag_rows_disagree": lambda: all_gatherv(torch.zeros(3, 2), g, 0, [2] * world),
        "ag_list_sizes_too_long": lambda: all_gatherv([torch.zeros(1, 2)], g, 0, [1] * (world + 1)),
        "rs_sizes_too_long": lambda: reduce_scatterv(
            torch.zeros(2, world), g, -1, [1] * (world + 1)
        ),
        "rs_sizes_bad_sum": lambda: reduce_scatterv(torch.zeros(2, 3 * world), g, -1, [1] * world),
        "rs_sizes_negative": lambda: reduce_scatterv(
            torch.zeros(2, world), g, -1, [2, -1] + [1] * (world - 2)
        ),
        "rs_uneven_without_sizes": lambda: reduce_scatterv(torch.zeros(2, world + 1), g, -1, None),
    }


# ------------------------------------------------------------------------------ worker


def _run_cases(rank: int, world: int) -> dict:
    from vllm_ascend.distributed.variable_collectives import all_gatherv, reduce_scatterv

    g = dist.group.WORLD
    out: dict = {}
    for name, (dim, dtype, shape, table, pass_sizes) in AG_CASES.items():
        sizes = table[world]
        t = make_tensor(name, rank, shape(sizes[rank]), dtype)
        out[("ag", name)] = all_gatherv(t, g, dim, sizes if pass_sizes else None)
    for name, (dim, dtype, shape, table, pass_sizes) in RS_CASES.items():
        sizes = table[world]
        t = make_tensor(name, rank, shape(sum(sizes)), dtype)
        out[("rs", name)] = reduce_scatterv(t, g, dim, sizes if pass_sizes else None)
    sizes = UNEVEN[world]
    out[("ag", LIST_CASE)] = all_gatherv(list_inputs(rank, sizes[rank]), g, 0, sizes)
    # A subgroup: ranks are group ranks, not global ranks. world 2: {1}; world 4: {1, 3}.
    members = [1] if world == 2 else [1, 3]
    sub = dist.new_group(members)
    if rank in members:
        sub_sizes = [2, 1][: len(members)]
        me = members.index(rank)
        t = make_tensor("subgroup_ag", rank, (sub_sizes[me], 3), torch.float32)
        out[("sub", "ag")] = all_gatherv(t, sub, 0, sub_sizes)
        r = make_tensor("subgroup_rs", rank, (2, sum(sub_sizes)), torch.int64)
        out[("sub", "rs")] = reduce_scatterv(r, sub, -1, sub_sizes)
    dist.barrier()
    for name, thunk in error_cases(rank, world).items():
        try:
            thunk()
        except Exception as e:  # noqa: BLE001 - recorded for the parent to judge
            out[("err", name)] = (type(e).__name__, str(e))
        else:
            out[("err", name)] = ("no error", "")
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    result: dict
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
        try:
            result = {"ok": _run_cases(rank, world)}
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - the parent shows it
        result = {"traceback": traceback.format_exc()}
    torch.save(result, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda w: f"world{w}")
def group_results(request, tmp_path_factory):
    """Spawn one gloo group of the given size, run every case, return (world, per-rank results)."""
    world = request.param
    tmp = tmp_path_factory.mktemp(f"gloo{world}")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(r, world, str(tmp / "init"), str(tmp)), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = []
    for r, p in enumerate(procs):
        path = tmp / f"rank{r}.pt"
        assert path.exists(), f"rank {r} wrote no result (exit code {p.exitcode})"
        res = torch.load(path, weights_only=False)
        assert "ok" in res, f"rank {r} failed:\n{res['traceback']}"
        results.append(res["ok"])
        assert p.exitcode == 0, f"rank {r} exit code {p.exitcode}"
    return world, results


def same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert tuple(got.shape) == tuple(want.shape), (tuple(got.shape), tuple(want.shape))
    assert got.is_contiguous()
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------ checks


@pytest.mark.parametrize("name", list(AG_CASES))
def test_all_gatherv_concatenates_in_rank_order(group_results, name):
    world, results = group_results
    dim, dtype, shape, table, _ = AG_CASES[name]
    sizes = table[world]
    want = torch.cat([make_tensor(name, r, shape(sizes[r]), dtype) for r in range(world)], dim=dim)
    assert want.shape[dim] == sum(sizes)
    for rank in range(world):
        same(results[rank][("ag", name)], want)


def test_all_gatherv_list_input(group_results):
    world, results = group_results
    sizes = UNEVEN[world]
    parts = [list_inputs(r, sizes[r]) for r in range(world)]
    want = [torch.cat([p[i] for p in parts], dim=0) for i in range(2)]
    for rank in range(world):
        got = results[rank][("ag", LIST_CASE)]
        assert isinstance(got, list) and len(got) == 2
        for g, w in zip(got, want):
            same(g, w)


@pytest.mark.parametrize("name", list(RS_CASES))
def test_reduce_scatterv_sums_then_slices(group_results, name):
    world, results = group_results
    dim, dtype, shape, table, _ = RS_CASES[name]
    sizes = table[world]
    inputs = [make_tensor(name, r, shape(sum(sizes)), dtype) for r in range(world)]
    if dtype.is_floating_point:
        total = torch.stack([t.double() for t in inputs]).sum(0)
    else:
        total = torch.stack(inputs).sum(0).to(dtype)
    start = 0
    for rank in range(world):
        got = results[rank][("rs", name)]
        want = total.narrow(dim, start, sizes[rank])
        start += sizes[rank]
        assert got.dtype == dtype and tuple(got.shape) == tuple(want.shape)
        assert got.is_contiguous()
        if dtype.is_floating_point:
            # Summation order differs between gloo and the reference: float tolerance.
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
        else:
            assert torch.equal(got, want)
    assert start == total.shape[dim]


def test_subgroup_uses_group_ranks(group_results):
    world, results = group_results
    members = [1] if world == 2 else [1, 3]
    sizes = [2, 1][: len(members)]
    want_ag = torch.cat(
        [make_tensor("subgroup_ag", r, (sizes[i], 3), torch.float32) for i, r in enumerate(members)]
    )
    rs_in = [make_tensor("subgroup_rs", r, (2, sum(sizes)), torch.int64) for r in members]
    total = torch.stack(rs_in).sum(0)
    for rank in range(world):
        if rank not in members:
            assert ("sub", "ag") not in results[rank]
            continue
        me = members.index(rank)
        same(results[rank][("sub", "ag")], want_ag)
        want_rs = total.narrow(-1, sum(sizes[:me]), sizes[me]).contiguous()
        same(results[rank][("sub", "rs")], want_rs)
    if world == 2:
        # A group of one: the input comes back unchanged.
        only = members[0]
        assert torch.equal(results[only][("sub", "rs")], rs_in[0])


ERRORS = {
    "ag_sizes_too_long": r"all_gatherv: sizes must list {world} non-negative extents",
    "ag_sizes_too_short": r"all_gatherv: sizes must list {world} non-negative extents",
    "ag_sizes_negative": r"all_gatherv: sizes must list {world} non-negative",
    "ag_rows_disagree": r"all_gatherv: rank {rank} holds 3 rows along dim 0, sizes says 2",
    "ag_list_sizes_too_long": r"all_gatherv: sizes must list {world}",
    "rs_sizes_too_long": r"reduce_scatterv: sizes must list {world} non-negative extents",
    "rs_sizes_bad_sum": r"reduce_scatterv: sizes \[.*\] sum to {world}, extent is {extent}",
    "rs_sizes_negative": r"reduce_scatterv: sizes must list {world} non-negative",
    "rs_uneven_without_sizes": r"reduce_scatterv: extent {odd} along dim 1 does not split evenly "
    r"over {world} ranks; pass sizes",
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_arguments_raise_value_error(group_results, name):
    world, results = group_results
    for rank in range(world):
        kind, msg = results[rank][("err", name)]
        assert kind == "ValueError", (kind, msg)
        pattern = ERRORS[name].format(world=world, rank=rank, extent=3 * world, odd=world + 1)
        assert re.search(pattern, msg), (pattern, msg)


def test_case_tables_cover_the_brief():
    """Guard the table itself: a zero-row rank, dims 0 / last / middle, ints and floats."""
    for table in (UNEVEN,):
        assert all(0 in v and len(set(v)) > 1 for v in table.values())
    dims = {c[0] for c in AG_CASES.values()} | {c[0] for c in RS_CASES.values()}
    assert {0, -1, 1, -2} <= dims
    dtypes = {c[1] for c in AG_CASES.values()} | {c[1] for c in RS_CASES.values()}
    assert any(d.is_floating_point for d in dtypes) and any(not d.is_floating_point for d in dtypes)
    assert not all(c[4] for c in AG_CASES.values()) and not all(c[4] for c in RS_CASES.values())
