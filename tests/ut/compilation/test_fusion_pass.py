"""The plugin's Inductor fusion pass (vllm_ascend/compilation): on a compiled W8A8_DYNAMIC
block (residual add + RMSNorm -> per-token quant -> int8 GEMM -> SwiGLU -> per-token quant)
both patterns are replaced: the post-grad graph holds the fused csrc norm + quant op and no
RMSNorm of its own, for every token count from one graph, with the same numbers as the
fused ops in eager."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._inductor.custom_graph_pass import CustomGraphPass

from vllm_ascend.device import ops
from vllm_ascend.device.reference import cpu_kernels

pytestmark = pytest.mark.skipif(not (cpu_kernels.native_available()
                                     and cpu_kernels.onednn_available()),
                                reason="vllm_ascend._C not built or oneDNN int8 not exact here")

H, N = 64, 48


class _Capture(CustomGraphPass):
    """Runs the fusion pass and keeps the graph it leaves."""

    def __init__(self, fusion_pass):
        self.fusion_pass, self.graphs = fusion_pass, []

    def __call__(self, graph):
        self.fusion_pass(graph)
        self.graphs.append(graph)

    def uuid(self):
        return None


@pytest.fixture(scope="module")
def fusion_pass():
    from vllm.config import VllmConfig

    from vllm_ascend.compilation.fusion import AscendQuantFusionPass

    return AscendQuantFusionPass(VllmConfig())


def _targets(graph) -> set[str]:
    return {str(n.target) for n in graph.nodes if n.op == "call_function"}


def test_pass_rewrites_norm_and_swiglu_quant(fusion_pass):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (H, N), dtype=torch.int8, generator=g)
    ws = torch.rand(N, generator=g) * 1e-2 + 1e-3
    gamma = torch.rand(H, generator=g) + 0.5

    def block(x, residual):
        y, _, x_sum = ops.npu_add_rms_norm(x, residual, gamma, 1e-6)
        xq, xs = ops.npu_dynamic_quant(y)
        h = ops.npu_quant_matmul(xq, w, ws, pertoken_scale=xs, output_dtype=x.dtype)
        aq, a_scale = ops.npu_dynamic_quant(ops.npu_swiglu(h, dim=-1))
        return aq, a_scale, x_sum

    def fused(x, residual):
        xq, _, x_sum, xs, _ = ops.npu_add_rms_norm_dynamic_quant(x, residual, gamma)
        h = ops.npu_quant_matmul(xq, w, ws, pertoken_scale=xs, output_dtype=x.dtype)
        aq, a_scale = ops.npu_swiglu_quant(h, activate_left=True, quant_mode=1)
        return aq, a_scale, x_sum

    capture = _Capture(fusion_pass)
    compiled = torch.compile(block, backend="inductor", dynamic=True, fullgraph=True,
                             options={"post_grad_custom_post_pass": capture,
                                      "fx_graph_cache": False})
    for rows in (2, 3, 8):  # (dynamo specialises a size of 1 in its own graph)
        x, r = torch.randn(rows, H, generator=g), torch.randn(rows, H, generator=g)
        for got, want in zip(compiled(x, r), fused(x, r)):
            assert torch.equal(got, want)
    assert fusion_pass.matched_count == 2
    assert len(capture.graphs) == 1  # one graph for every row count
    graph = capture.graphs[0]
    targets = _targets(graph)
    assert "vllm_ascend.add_rms_norm_quant.default" in targets
    assert not any("rsqrt" in t for t in targets)  # no RMSNorm left outside the fused op
    # npu_swiglu_quant without smooth scales is, on the reference backend, torch's SwiGLU +
    # csrc's dynamic_quant_int8 (bit-identical to the pattern; fused.py): one quant remains
    quants = [n for n in graph.nodes if "dynamic_quant_int8" in str(n.target)]
    assert len(quants) == 1
    torch._dynamo.reset()


def test_pass_leaves_a_norm_output_with_other_users(fusion_pass):
    """The norm's float output also feeds another op: no rewrite (it would be recomputed)."""
    torch._dynamo.reset()
    gamma = torch.rand(H) + 0.5

    def f(x, residual):
        y, _, x_sum = ops.npu_add_rms_norm(x, residual, gamma, 1e-6)
        xq, xs = ops.npu_dynamic_quant(y)
        return xq, xs, x_sum, y * 2

    capture = _Capture(fusion_pass)
    compiled = torch.compile(f, backend="inductor", dynamic=True, fullgraph=True,
                             options={"post_grad_custom_post_pass": capture,
                                      "fx_graph_cache": False})
    x, r = torch.randn(4, H), torch.randn(4, H)
    for got, want in zip(compiled(x, r), f(x, r)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1)
    assert fusion_pass.matched_count == 0
    assert "vllm_ascend.dynamic_quant_int8.default" in _targets(capture.graphs[0])
    torch._dynamo.reset()


def test_cpu_platform_names_the_pass_manager():
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from vllm_ascend.compilation.pass_manager import AscendPassManager
    from vllm_ascend.platform.cpu import AscendCPUPlatform

    assert resolve_obj_by_qualname(AscendCPUPlatform.get_pass_manager_cls()) is AscendPassManager


def _config(mode, backend="inductor"):
    from vllm.config import VllmConfig

    config = VllmConfig()  # (its post-init on the CPU platform rewrites the mode: set after)
    config.compilation_config.mode, config.compilation_config.backend = mode, backend
    return config


def test_plain_inductor_compile_gets_the_fusion_pass():
    """vLLM's CPU platform compiles with DYNAMO_TRACE_ONCE + the "inductor" backend (plain
    torch.compile, no pass manager): the worker puts the pass into Inductor's options."""
    from vllm.config import CompilationMode

    from vllm_ascend.compilation.fusion import AscendQuantFusionPass
    from vllm_ascend.compilation.pass_manager import POST_GRAD_KEY, install_for_plain_inductor

    config = _config(CompilationMode.DYNAMO_TRACE_ONCE)
    assert install_for_plain_inductor(config)
    installed = config.compilation_config.inductor_compile_config[POST_GRAD_KEY]
    assert isinstance(installed, AscendQuantFusionPass)
    assert install_for_plain_inductor(config)  # idempotent: the same pass stays
    assert config.compilation_config.inductor_compile_config[POST_GRAD_KEY] is installed
    for mode, backend in [(CompilationMode.VLLM_COMPILE, "inductor"),
                          (CompilationMode.DYNAMO_TRACE_ONCE, "eager"),
                          (CompilationMode.NONE, "inductor")]:
        other = _config(mode, backend)
        assert not install_for_plain_inductor(other)
        assert POST_GRAD_KEY not in other.compilation_config.inductor_compile_config


def test_plain_inductor_refuses_to_replace_another_pass():
    from vllm.config import CompilationMode

    from vllm_ascend.compilation.pass_manager import POST_GRAD_KEY, install_for_plain_inductor

    config = _config(CompilationMode.DYNAMO_TRACE_ONCE)
    theirs = _Capture(lambda graph: None)
    config.compilation_config.inductor_compile_config[POST_GRAD_KEY] = theirs
    with pytest.raises(ValueError, match="post_grad_custom_post_pass.*already set"):
        install_for_plain_inductor(config)
    assert config.compilation_config.inductor_compile_config[POST_GRAD_KEY] is theirs


def test_model_epsilon_is_matched_exactly(fusion_pass):
    """A GGUF-converted config stores rms_norm_eps as float32 (SmolLM2: 9.999999747378752e-06):
    the pattern for that exact constant is registered, and matches where 1e-5's would not."""
    import types

    from vllm.config import VllmConfig

    from vllm_ascend.compilation.fusion import AscendQuantFusionPass, model_epsilons

    eps32 = float(torch.tensor(1e-5, dtype=torch.float32))
    assert eps32 == 9.999999747378752e-06 != 1e-5
    config = VllmConfig()
    config.model_config = types.SimpleNamespace(
        hf_text_config=types.SimpleNamespace(rms_norm_eps=eps32), dtype=torch.float32)
    assert model_epsilons(config) == (eps32,)
    assert model_epsilons(VllmConfig()) == ()
    own = AscendQuantFusionPass(config)
    assert own.epsilons[0] == eps32 and own.uuid() != fusion_pass.uuid()

    torch._dynamo.reset()
    gamma = torch.rand(H) + 0.5

    def f(x, residual):  # a literal: Dynamo makes a closure's float a graph input
        y, _, x_sum = ops.npu_add_rms_norm(x, residual, gamma, 9.999999747378752e-06)
        return (*ops.npu_dynamic_quant(y), x_sum)

    for pass_, matches in [(own, 1), (fusion_pass, 0)]:
        torch._dynamo.reset()
        compiled = torch.compile(f, backend="inductor", dynamic=True, fullgraph=True,
                                 options={"post_grad_custom_post_pass": _Capture(pass_),
                                          "fx_graph_cache": False})
        compiled(torch.randn(4, H), torch.randn(4, H))
        assert pass_.matched_count == matches
    torch._dynamo.reset()
