"""The plugin's MoE inside vLLM's MoE layer (``vllm_integration``, ``parallel``).

- registration: vLLM's ``FusedMoEFactory`` hands out the plugin's runner and float method;
- a layer built by ``FusedMoEFactory`` (no engine) equals a float64 dense MoE written here
  (Qwen3-style softmax top-k with its gate inside the runner; DeepSeek-V3-style noaux_tc:
  sigmoid, bias, grouped top-k, routed scale on the output, shared experts), eager and
  inside ``torch.compile(fullgraph=True)`` (the MoE must stay an opaque custom op);
- the ``moe_comm_method`` override: validated, and every single-rank-capable method gives
  the same output;
- the parallel layout helpers (TP chunking, the per-step token maximum);
- two ranks with vLLM's own process groups (gloo, no engine): TP2 (experts sharded along
  I) and TP2 + expert parallel (tokens chunked over the TP ranks; mc2 by default, all2allv
  and allgather forced), weights through vLLM's expert loader, a TP-sharded shared expert
  returning partial sums: every rank's output equals the float64 MoE.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import traceback

import pytest
import torch
import torch.nn.functional as F
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.forward_context import set_forward_context
from vllm.model_executor.custom_op import op_registry_oot
from vllm.model_executor.layers.fused_moe import FusedMoEFactory
from vllm.model_executor.layers.fused_moe.config import FusedMoEParallelConfig

from vllm_ascend.ops.fused_moe.parallel import (
    MoEParallelLayout,
    max_tokens_per_rank,
    tp_chunk,
    tp_unchunk,
)
from vllm_ascend.ops.fused_moe.vllm_integration import (
    AscendMoERunner,
    AscendUnquantizedFusedMoEMethod,
    comm_override,
)
from vllm_ascend.ops.registry import register_ops
from vllm_ascend.platform.common import validate_additional_config

H, I = 16, 12
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_ops()


class Gate(torch.nn.Module):
    """A router gate like vLLM's GateLinear: ``x -> (x @ W^T, None)``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return x @ self.weight.T, None


class SharedMLP(torch.nn.Module):
    def __init__(self, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> None:
        super().__init__()
        self.w_gate_up, self.w_down = w_gate_up, w_down

    def forward(self, x):
        return swiglu_mlp(x, self.w_gate_up, self.w_down)


def swiglu_mlp(x, w13, w2):
    """``(silu(x @ gate^T) * (x @ up^T)) @ w2^T`` with w13 (2I, H) = [gate; up], w2 (H, I)."""
    gate, up = (x @ w13.T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2.T


def oracle(x, logits, w13, w2, *, top_k, scoring="softmax", renormalize=True, bias=None,
           groups=None, topk_group=None, scale=1.0):
    """float64 dense MoE: ``sum_k w_k * expert_{id_k}(x)``, vLLM's selection semantics."""
    x, logits, w13, w2 = (t.double() for t in (x, logits, w13, w2))
    scores = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
    choice = scores if bias is None else scores + bias.double()
    if groups:
        per_group = choice.view(len(x), groups, -1)
        group_score = per_group.topk(2, -1).values.sum(-1) if bias is not None \
            else per_group.max(-1).values
        keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(topk_group, -1)[1], 1)
        choice = choice.masked_fill(~keep.bool().repeat_interleave(per_group.shape[-1], 1),
                                    float("-inf"))
    ids = choice.topk(top_k, -1).indices
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(len(x)):
        for k in range(top_k):
            e = int(ids[t, k])
            out[t] += scale * weights[t, k] * swiglu_mlp(x[t], w13[e], w2[e])
    return out


def build(experts=8, top_k=2, *, additional_config=None, seed=0, **factory_kwargs):
    """A layer from vLLM's factory with random weights loaded (and processed)."""
    g = torch.Generator().manual_seed(seed)
    cfg = VllmConfig(additional_config=additional_config or {})
    with set_current_vllm_config(cfg):
        layer = FusedMoEFactory(
            num_experts=experts, top_k=top_k, hidden_size=H, intermediate_size=I,
            params_dtype=torch.float32, tp_size=1, dp_size=1, pcp_size=1,
            prefix=f"model.layers.{next(_names)}.mlp.experts", **factory_kwargs)
    routed = layer.routed_experts
    w13 = torch.randn(experts, 2 * I, H, generator=g) * 0.3
    w2 = torch.randn(experts, H, I, generator=g) * 0.3
    routed.w13_weight.data.copy_(w13)
    routed.w2_weight.data.copy_(w2)
    routed.quant_method.process_weights_after_loading(routed)
    return layer, cfg, w13, w2


def run(layer, cfg, x, logits, compiled=False):
    fn = layer
    if compiled:
        fn = torch.compile(lambda a, b: layer(a, b), fullgraph=True, backend="eager",
                           dynamic=True)
    with set_forward_context(None, cfg):
        return fn(x, logits)


def close(got, want):
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------------ registration


def test_factory_builds_the_plugin_runner_and_float_method():
    layer, *_ = build()
    assert type(layer) is AscendMoERunner
    assert type(layer.routed_experts.quant_method) is AscendUnquantizedFusedMoEMethod
    assert op_registry_oot["MoERunner"] is AscendMoERunner
    assert op_registry_oot["UnquantizedFusedMoEMethod"] is AscendUnquantizedFusedMoEMethod
    # weights in the grouped matmul's (E, K, N) layout after loading
    assert layer.routed_experts.w13_weight.shape == (8, H, 2 * I)
    assert layer.routed_experts.w2_weight.shape == (8, I, H)


# ------------------------------------------------------------------ forward vs float64


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("tokens", [1, 7])
def test_softmax_topk_layer_matches_float64(tokens, renormalize, compiled):
    layer, cfg, w13, w2 = build(renormalize=renormalize, seed=tokens)
    g = torch.Generator().manual_seed(100 + tokens)
    x, logits = torch.randn(tokens, H, generator=g), torch.randn(tokens, 8, generator=g)
    close(run(layer, cfg, x, logits, compiled),
          oracle(x, logits, w13, w2, top_k=2, renormalize=renormalize))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_runner_applies_its_gate_like_qwen3(compiled):
    """Qwen3-MoE passes hidden states as ``router_logits``; the runner's gate routes."""
    g = torch.Generator().manual_seed(7)
    gate_w = torch.randn(8, H, generator=g)
    layer, cfg, w13, w2 = build(gate=Gate(gate_w), renormalize=True)
    x = torch.randn(9, H, generator=g)
    close(run(layer, cfg, x, x, compiled), oracle(x, x @ gate_w.T, w13, w2, top_k=2))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_noaux_tc_layer_with_shared_experts_matches_float64(compiled):
    """DeepSeek-V3 routing (sigmoid, bias, 4 groups choose 2, k=4, renormalise, routed
    scale 2.5 applied to the output by the runner) plus a shared expert."""
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(16, generator=g) * 0.1
    shared_w13, shared_w2 = torch.randn(2 * I, H, generator=g) * 0.3, \
        torch.randn(H, I, generator=g) * 0.3
    layer, cfg, w13, w2 = build(
        experts=16, top_k=4, renormalize=True, use_grouped_topk=True, num_expert_group=4,
        topk_group=2, scoring_func="sigmoid", e_score_correction_bias=bias,
        routed_scaling_factor=2.5, apply_routed_scale_to_output=True,
        shared_experts=SharedMLP(shared_w13, shared_w2))
    x, logits = torch.randn(6, H, generator=g), torch.randn(6, 16, generator=g)
    want = oracle(x, logits, w13, w2, top_k=4, scoring="sigmoid", bias=bias, groups=4,
                  topk_group=2, scale=2.5) + swiglu_mlp(x.double(), shared_w13.double(),
                                                        shared_w2.double())
    close(run(layer, cfg, x, logits, compiled), want)


# --------------------------------------------------------------------- comm override


@pytest.mark.parametrize("method", ["allgather", "all2allv"])
def test_override_picks_the_method_and_keeps_the_output(method):
    layer, cfg, w13, w2 = build(additional_config={"ascend": {"moe_comm_method": method}})
    assert layer.comm_for_step(5).name == method
    g = torch.Generator().manual_seed(11)
    x, logits = torch.randn(5, H, generator=g), torch.randn(5, 8, generator=g)
    close(run(layer, cfg, x, logits), oracle(x, logits, w13, w2, top_k=2))


def test_without_override_a_single_rank_uses_allgather():
    layer, *_ = build()
    assert layer.comm_override is None
    assert layer.comm_for_step(1).name == layer.comm_for_step(10_000).name == "allgather"


def test_unknown_comm_method_is_rejected_listing_the_registered_ones():
    with pytest.raises(ValueError, match=r"'nope'.*all2allv, allgather, mc2"):
        comm_override({"ascend": {"moe_comm_method": "nope"}})
    with pytest.raises(ValueError, match="must be a string"):
        comm_override({"ascend": {"moe_comm_method": 2}})
    with pytest.raises(ValueError, match="'nope'"):
        build(additional_config={"ascend": {"moe_comm_method": "nope"}})
    assert comm_override({}) is None and comm_override({"ascend": {}}) is None


def test_mc2_override_needs_expert_parallelism():
    with pytest.raises(ValueError, match="mc2.*expert parallelism"):
        build(additional_config={"ascend": {"moe_comm_method": "mc2"}})


def test_the_override_key_is_an_accepted_additional_config_key():
    class Cfg:
        additional_config = {"ascend": {"moe_comm_method": "all2allv"}}

    validate_additional_config(Cfg())


def test_unsupported_features_are_refused_at_construction():
    with pytest.raises(NotImplementedError, match="custom routing function"):
        build(custom_routing_function=lambda *a: None)


# ------------------------------------------------------------------- parallel layout


@pytest.mark.parametrize("tokens", range(0, 8))
@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_tp_chunks_sum_back_to_the_tokens(tokens, chunks):
    x = torch.randn(tokens, 3)
    parts = [tp_chunk(x, chunks, r) for r in range(chunks)]
    assert len({p.shape[0] for p in parts}) == 1  # equal rows on every rank
    assert torch.equal(sum(tp_unchunk(p, tokens, chunks, r) for r, p in enumerate(parts)), x)


def parallel_config(tp=1, dp=1, dp_rank=0, tp_rank=0, use_ep=False):
    ep = tp * dp if use_ep else 1
    return FusedMoEParallelConfig(
        tp_size=1 if use_ep else tp * dp, tp_rank=0 if use_ep else dp_rank * tp + tp_rank,
        pcp_size=1, pcp_rank=0, dp_size=dp, dp_rank=dp_rank, ep_size=ep,
        ep_rank=dp_rank * tp + tp_rank if use_ep else 0, sp_size=1, use_ep=use_ep,
        all2all_backend="allgather_reducescatter", enable_eplb=False)


def test_layout_from_vllm_flags():
    assert MoEParallelLayout.from_vllm(parallel_config(tp=2), False) == MoEParallelLayout()
    assert MoEParallelLayout.from_vllm(parallel_config(tp=2, tp_rank=1, use_ep=True), False) \
        == MoEParallelLayout(ep_size=2, ep_rank=1, tp_chunks=2, tp_rank=1, dp_size=1)
    assert MoEParallelLayout.from_vllm(parallel_config(dp=2, dp_rank=1, use_ep=True), False) \
        == MoEParallelLayout(ep_size=2, ep_rank=1, tp_chunks=1, tp_rank=0, dp_size=2)
    both = parallel_config(tp=2, dp=2, dp_rank=1, tp_rank=1, use_ep=True)
    assert MoEParallelLayout.from_vllm(both, False) == MoEParallelLayout(4, 3, 2, 1, 2)
    assert MoEParallelLayout.from_vllm(both, True) == MoEParallelLayout(4, 3, 1, 0, 2)
    with pytest.raises(NotImplementedError, match="enable_expert_parallel"):
        MoEParallelLayout.from_vllm(parallel_config(dp=2), False)


def test_max_tokens_per_rank():
    tp_ep = MoEParallelLayout(ep_size=2, ep_rank=0, tp_chunks=2)
    assert max_tokens_per_rank(tp_ep, 5) == 3
    dp_ep = MoEParallelLayout(ep_size=2, ep_rank=1, dp_size=2)
    assert max_tokens_per_rank(dp_ep, 1, torch.tensor([300, 1])) == 300
    both = MoEParallelLayout(4, 3, 2, 1, 2)
    assert max_tokens_per_rank(both, 4, torch.tensor([9, 4])) == 5
    with pytest.raises(ValueError, match="tokens_across_dp or cpu_group"):
        max_tokens_per_rank(dp_ep, 1)


# ------------------------------------------------------- two ranks, vLLM process groups

TWO_RANK_CASES = {  # name -> (enable_expert_parallel, moe_comm_method override, comm used)
    "tp2": (False, None, "allgather"),
    "tp2_ep": (True, None, "mc2"),
    "tp2_ep_all2allv": (True, "all2allv", "all2allv"),
    "tp2_ep_allgather": (True, "allgather", "allgather"),
}
TWO_RANK_TOKENS = (1, 5)  # 1 token: rank 1's chunk is all padding


class PartialSharedMLP(torch.nn.Module):
    """A shared expert sharded like vLLM's TP MLP with ``reduce_results=False``: this rank's
    slice of the intermediate dim, so its output is a partial sum over the TP ranks."""

    def __init__(self, w13, w2, rank, world):
        super().__init__()
        inter = w2.shape[1] // world
        gate, up = w13.chunk(2)
        cols = slice(rank * inter, (rank + 1) * inter)
        self.w13 = torch.cat([gate[cols], up[cols]])
        self.w2 = w2[:, cols]

    def forward(self, x):
        return swiglu_mlp(x, self.w13, self.w2)


def _two_rank_data():
    g = torch.Generator().manual_seed(21)
    w = {"w13": torch.randn(8, 2 * I, H, generator=g) * 0.3,
         "w2": torch.randn(8, H, I, generator=g) * 0.3,
         "s13": torch.randn(2 * I, H, generator=g) * 0.3,
         "s2": torch.randn(H, I, generator=g) * 0.3}
    inputs = {n: (torch.randn(n, H, generator=g), torch.randn(n, 8, generator=g))
              for n in TWO_RANK_TOKENS}
    return w, inputs


def _two_rank_main(rank: int, world: int, tmp: str) -> None:
    try:
        os.environ["VLLM_DIST_IDENT"] = os.path.basename(tmp)  # vLLM CPU shm group names
        from vllm.config import ParallelConfig
        from vllm.distributed import (
            ensure_model_parallel_initialized,
            init_distributed_environment,
        )

        register_ops()
        w, inputs = _two_rank_data()
        init_cfg = VllmConfig(parallel_config=ParallelConfig(
            tensor_parallel_size=world, enable_expert_parallel=True))
        with set_current_vllm_config(init_cfg):
            init_distributed_environment(world_size=world, rank=rank, local_rank=rank,
                                         distributed_init_method=f"file://{tmp}/init",
                                         backend="gloo")
            ensure_model_parallel_initialized(world, 1)
        results = {}
        for name, (ep, method, _) in TWO_RANK_CASES.items():
            cfg = VllmConfig(
                parallel_config=ParallelConfig(tensor_parallel_size=world,
                                               enable_expert_parallel=ep),
                additional_config={"ascend": {"moe_comm_method": method}} if method else {})
            with set_current_vllm_config(cfg):
                layer = FusedMoEFactory(
                    num_experts=8, top_k=2, hidden_size=H, intermediate_size=I,
                    params_dtype=torch.float32, renormalize=True, prefix=f"{name}.experts",
                    shared_experts=PartialSharedMLP(w["s13"], w["s2"], rank, world))
                routed = layer.routed_experts
                for e in range(8):  # vLLM's loader shards (TP) or skips (EP) each expert
                    for shard, part in (("w1", w["w13"][e, :I]), ("w3", w["w13"][e, I:])):
                        routed.weight_loader(routed.w13_weight, part, "w13_weight", shard, e)
                    routed.weight_loader(routed.w2_weight, w["w2"][e], "w2_weight", "w2", e)
                routed.quant_method.process_weights_after_loading(routed)
                with set_forward_context(None, cfg):
                    for n, (x, logits) in inputs.items():
                        results[name, n] = (layer(x, logits), layer.comm_for_step(n).name)
        torch.save(results, f"{tmp}/rank{rank}.pt")
    except BaseException:
        with open(f"{tmp}/rank{rank}.err", "w") as f:
            f.write(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def two_rank_results():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        try:
            mp.spawn(_two_rank_main, args=(2, tmp), nprocs=2, join=True)
        except Exception:
            errors = [open(f"{tmp}/rank{r}.err").read() for r in range(2)
                      if os.path.exists(f"{tmp}/rank{r}.err")]
            raise AssertionError("\n".join(errors) or "a rank failed") from None
        return [torch.load(f"{tmp}/rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("tokens", TWO_RANK_TOKENS)
@pytest.mark.parametrize("case", list(TWO_RANK_CASES))
def test_two_ranks_match_float64(two_rank_results, case, tokens):
    w, inputs = _two_rank_data()
    x, logits = inputs[tokens]
    want = oracle(x, logits, w["w13"], w["w2"], top_k=2) + \
        swiglu_mlp(x.double(), w["s13"].double(), w["s2"].double())
    for rank, results in enumerate(two_rank_results):
        out, comm = results[case, tokens]
        assert comm == TWO_RANK_CASES[case][2], (rank, comm)
        close(out, want)
