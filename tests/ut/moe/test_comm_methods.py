"""moe_forward through each comm method (allgather, all2allv, mc2) equals a dense float64 MoE.

Multi-process: ONE spawned gloo group per world size (2 and 4) runs every case; each rank
saves its outputs with ``torch.save`` and the parent checks them. The cases are drawn by
hypothesis in the parent (derandomised, so the run is reproducible) plus fixed cases for
the edges the brief names, and shipped to the ranks in that one spawn. A world-size-1
group in this process covers the trivial group quickly.

Each rank builds its tokens and routing from the case's seed; the router logits are
constructed so that the intended experts win by a wide margin, which makes the float64
oracle select the same experts. The oracle: ``out[t] = sum_k w[t,k] * expert_{id}(x[t])``
with ``expert_e(x) = (silu(x @ Wg_e) * (x @ Wu_e)) @ Wd_e`` (+ ``0.5 x`` shared expert).
"""

from __future__ import annotations

import datetime
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

METHODS = ("allgather", "all2allv", "mc2")
WORLD_SIZES = (2, 4)


# ------------------------------------------------------------------------------- cases


def case(world, experts, top_k, tokens, routing="random", *, hidden=6, inter=4,
         renormalize=True, quantize=False, shared=False, seed=0) -> dict:
    return dict(world=world, experts=experts, top_k=top_k, tokens=list(tokens), routing=routing,
                hidden=hidden, inter=inter, renormalize=renormalize, quantize=quantize,
                shared=shared, seed=seed)


@st.composite
def comm_case(draw, world: int) -> dict:
    local = draw(st.integers(1, 3))
    top_k = draw(st.integers(1, min(world * local, 4)))
    routing = draw(st.sampled_from(["random", "one_expert", "first_rank"]))
    if routing == "first_rank" and top_k > local:
        routing = "random"
    return case(
        world, world * local, top_k, draw(st.lists(st.integers(0, 9), min_size=world,
                                                   max_size=world)),
        routing, hidden=draw(st.integers(1, 8)), inter=draw(st.integers(1, 5)),
        renormalize=draw(st.booleans()), quantize=draw(st.booleans()),
        shared=draw(st.booleans()), seed=draw(st.integers(0, 10**6)),
    )


def draw_cases(world: int) -> list[dict]:
    """Hypothesis-drawn cases (half the profile's max_examples, 8 to 60), reproducibly."""
    found: list[dict] = []

    @settings(max_examples=min(60, max(8, settings.default.max_examples // 2)), derandomize=True,
              database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(comm_case(world))
    def collect(c):
        found.append(c)

    collect()
    return found


def fixed_cases(world: int) -> dict[str, dict]:
    w = world
    return {
        "every_rank_empty": case(w, 2 * w, 2, [0] * w),
        "all_tokens_to_one_expert": case(w, 2 * w, 1, [3] * w, "one_expert", seed=1),
        "one_expert_in_every_top_k": case(w, 3 * w, 3, range(1, w + 1), "one_expert", seed=2),
        "last_rank_has_no_tokens": case(w, 2 * w, 2, [4] * (w - 1) + [0], seed=3),
        "only_first_rank_experts": case(w, 2 * w, 2, [2] * w, "first_rank", seed=4),
        "softmax_no_renorm_shared": case(w, w, 1, [5] + [1] * (w - 1), renormalize=False,
                                         shared=True, seed=5),
        "int8_dispatch": case(w, 2 * w, 2, [3] * w, quantize=True, seed=6),
    }


def all_cases(world: int) -> dict[str, dict]:
    cases = fixed_cases(world)
    cases.update({f"drawn{i}": c for i, c in enumerate(draw_cases(world))})
    return cases


def expert_weights(c: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """w13 (E, H, 2I), w2 (E, I, H) fp32, identical on every rank."""
    g = torch.Generator().manual_seed(c["seed"])
    e, h, i = c["experts"], c["hidden"], c["inter"]
    return torch.randn(e, h, 2 * i, generator=g) * 0.5, torch.randn(e, i, h, generator=g) * 0.5


def rank_inputs(c: dict, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, H) fp32, router logits (N, E) fp32, the intended ids (N, K)."""
    g = torch.Generator().manual_seed(c["seed"] * 64 + rank + 1)
    n, e, k, local = c["tokens"][rank], c["experts"], c["top_k"], c["experts"] // c["world"]
    ids = torch.zeros(n, k, dtype=torch.int64)
    for t in range(n):
        if c["routing"] == "first_rank":
            ids[t] = torch.randperm(local, generator=g)[:k]
        elif c["routing"] == "one_expert":
            fixed = c["seed"] % e
            others = [x for x in torch.randperm(e, generator=g).tolist() if x != fixed]
            ids[t] = torch.tensor([fixed] + others[: k - 1])
        else:
            ids[t] = torch.randperm(e, generator=g)[:k]
    logits = torch.rand(n, e, generator=g) - 4.0
    wins = 2.0 - 0.7 * torch.arange(k) + 0.3 * torch.rand(n, k, generator=g)
    logits.scatter_(1, ids, wins)
    return torch.randn(n, c["hidden"], generator=g), logits, ids


def dequant_experts(w13: torch.Tensor, w2: torch.Tensor):
    """A stand-in quantised scheme: int8 rows * per-row scale, then the float MLP."""
    from vllm_ascend.ops.fused_moe import grouped_mlp

    def experts(hidden, group_list, dynamic_scale):
        assert hidden.dtype == torch.int8 and dynamic_scale is not None
        return grouped_mlp(hidden.float() * dynamic_scale[:, None], group_list, w13, w2)

    return experts


# ------------------------------------------------------------------------------ oracle


def oracle(c: dict, rank: int) -> torch.Tensor:
    """float64 dense MoE for this rank's tokens."""
    from vllm_ascend.device.reference.quant import npu_dynamic_quant

    x, logits, ids = rank_inputs(c, rank)
    w13, w2 = (w.double() for w in expert_weights(c))
    probs = torch.softmax(logits.double(), dim=-1)
    weights, chosen = probs.topk(c["top_k"], dim=-1)
    assert torch.equal(chosen, ids)  # the constructed logits pick the intended experts
    if c["renormalize"]:
        weights = weights / weights.sum(-1, keepdim=True)
    xin = x.double()
    if c["quantize"] and x.shape[0]:
        q, s = npu_dynamic_quant(x)
        xin = q.double() * s.double()[:, None]
    out = torch.zeros(x.shape, dtype=torch.float64)
    inter = c["inter"]
    for t in range(x.shape[0]):
        for j, e in enumerate(ids[t].tolist()):
            gate_up = xin[t] @ w13[e]
            out[t] += weights[t, j] * ((F.silu(gate_up[:inter]) * gate_up[inter:]) @ w2[e])
    return out + 0.5 * x.double() if c["shared"] else out


# ------------------------------------------------------------------------------ ranks


def run_cases(rank: int, world: int, cases: dict[str, dict], group) -> dict:
    """Every case through every method on this rank -> {(case, method): output}."""
    from vllm_ascend.ops.fused_moe import get_comm_method, moe_forward

    out = {}
    for name, c in cases.items():
        w13, w2 = expert_weights(c)
        x, logits, _ = rank_inputs(c, rank)
        for method in METHODS:
            comm = get_comm_method(method)(group, c["experts"])
            lo, hi = comm.local_expert_range
            out[(name, method)] = moe_forward(
                x, logits, w13[lo:hi], w2[lo:hi], top_k=c["top_k"], comm=comm,
                renormalize=c["renormalize"],
                experts_fn=dequant_experts(w13[lo:hi], w2[lo:hi]) if c["quantize"] else None,
                dispatch_int8=c["quantize"],
                shared_experts_fn=(lambda h: 0.5 * h) if c["shared"] else None,
            )
    return out


def _entry(rank, world, init_file, out_dir, run, payload) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=30))
        try:
            result = {"ok": run(rank, world, payload)}
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - the parent shows it
        result = {"traceback": traceback.format_exc()}
    torch.save(result, f"{out_dir}/rank{rank}.pt")


def run_in_gloo_group(world: int, run, payload, tmp) -> list:
    """Spawn ``world`` ranks of one gloo group; each calls ``run(rank, world, payload)``
    (a module-level function) and the parent gets the per-rank return values."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(r, world, str(tmp / "init"), str(tmp), run,
                                              payload), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    results = []
    for r, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            p.join()
        path = tmp / f"rank{r}.pt"
        assert path.exists(), f"rank {r} wrote no result (exit code {p.exitcode})"
        res = torch.load(path, weights_only=False)
        assert "ok" in res, f"rank {r} failed:\n{res['traceback']}"
        results.append(res["ok"])
    return results


def _spawned_run(rank: int, world: int, payload: dict) -> dict:
    """4 ranks: the world-4 cases on WORLD, then the world-2 cases split over two pairs
    of ranks running side by side ({0, 1} and {2, 3}: group ranks differ from global)."""
    out = {(4,) + key: value for key, value in
           run_cases(rank, world, payload[4], dist.group.WORLD).items()}
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    pair, group_rank = divmod(rank, 2)
    mine = {n: c for i, (n, c) in enumerate(payload[2].items()) if i % 2 == pair}
    out.update({(2,) + key + (group_rank,): value for key, value in
                run_cases(group_rank, 2, mine, pairs[pair]).items()})
    return out


@pytest.fixture(scope="module")
def spawned_results(tmp_path_factory):
    """One spawn of 4 ranks runs the cases of both world sizes."""
    cases = {world: all_cases(world) for world in WORLD_SIZES}
    tmp = tmp_path_factory.mktemp("moe")
    return cases, run_in_gloo_group(4, _spawned_run, cases, tmp)


@pytest.fixture(params=WORLD_SIZES, ids=lambda w: f"world{w}")
def group_results(request, spawned_results):
    """(world, cases, per-group-rank {(case, method): output})."""
    world = request.param
    cases, results = spawned_results
    per_rank: list[dict] = [{} for _ in range(world)]
    for rank, result in enumerate(results):
        for key, value in result.items():
            if key[0] == world == 4:  # (4, case, method)
                per_rank[rank][key[1:]] = value
            elif key[0] == world == 2:  # (2, case, method, group rank)
                per_rank[key[3]][key[1:3]] = value
    return world, cases[world], per_rank


def check_against_oracle(c: dict, got: torch.Tensor, rank: int, label: str) -> None:
    want = oracle(c, rank)
    assert got.dtype == torch.float32 and got.shape == want.shape, (label, got.shape, want.shape)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{label}: {m}")


# ------------------------------------------------------------------------------ tests


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_moe_forward_matches_dense_oracle(group_results, method):
    world, cases, results = group_results
    for name, c in cases.items():
        for rank in range(world):
            check_against_oracle(c, results[rank][(name, method)], rank,
                                 f"world {world}, {method}, case {name} {c}, rank {rank}")


def test_cases_cover_the_brief():
    """Experts without tokens, all tokens to one expert, a rank without tokens; drawn
    variety in token counts, top-k and expert counts."""
    for world in WORLD_SIZES:
        cases = all_cases(world)
        drawn = [c for n, c in cases.items() if n.startswith("drawn")]
        assert len({tuple(c["tokens"]) for c in drawn}) > 3
        assert len({c["top_k"] for c in drawn}) > 1 and len({c["experts"] for c in drawn}) > 1
        assert any(0 in c["tokens"] for c in cases.values())
        assert any(c["routing"] == "first_rank" for c in cases.values())
        one = cases["all_tokens_to_one_expert"]
        assert one["top_k"] == 1 and one["routing"] == "one_expert"
        assert any(sum(c["tokens"]) * c["top_k"] < c["experts"] for c in cases.values())


# ------------------------------------------------------------- world size 1, in process


@pytest.fixture(scope="module")
def trivial_group(tmp_path_factory):
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    init = tmp_path_factory.mktemp("gloo1") / "init"
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_world_size_one_group(trivial_group):
    cases = {**fixed_cases(1), **{f"drawn{i}": c for i, c in enumerate(draw_cases(1)[:8])}}
    results = run_cases(0, 1, cases, trivial_group)
    for (name, method), got in results.items():
        check_against_oracle(cases[name], got, 0, f"world 1, {method}, case {name}")


@pytest.mark.parametrize("method", ["allgather", "all2allv"])
def test_no_process_group(method):
    """ep_group=None: a single rank without torch.distributed."""
    from vllm_ascend.ops.fused_moe import get_comm_method, moe_forward

    for name, c in fixed_cases(1).items():
        w13, w2 = expert_weights(c)
        x, logits, _ = rank_inputs(c, 0)
        got = moe_forward(
            x, logits, w13, w2, top_k=c["top_k"], comm=get_comm_method(method)(None, c["experts"]),
            renormalize=c["renormalize"],
            experts_fn=dequant_experts(w13, w2) if c["quantize"] else None,
            dispatch_int8=c["quantize"],
            shared_experts_fn=(lambda h: 0.5 * h) if c["shared"] else None,
        )
        check_against_oracle(c, got, 0, f"no group, {method}, case {name}")
