"""The vLLM layer replacements (AscendRMSNorm, AscendRotaryEmbedding, AscendSiluAndMul).

Each replacement is checked against two oracles:

- an independent float64 computation written here from vLLM's documented semantics;
- vLLM's own upstream ``forward_native`` (called as the unbound upstream function on
  the same layer, since after ``register_ops()`` vLLM's constructors hand out our classes).

Plus ``register_ops()`` (idempotent, swaps the classes vLLM instantiates) and the
device facade inside ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor import custom_op
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

from vllm_ascend.device import ops
from vllm_ascend.ops.activation import AscendSiluAndMul
from vllm_ascend.ops.layernorm import AscendRMSNorm
from vllm_ascend.ops.registry import register_ops, replacements
from vllm_ascend.ops.rotary_embedding import AscendRotaryEmbedding

EXPECTED = {
    "RMSNorm": AscendRMSNorm,
    "RotaryEmbedding": AscendRotaryEmbedding,
    "SiluAndMul": AscendSiluAndMul,
}

_DEFAULT_CONFIG: VllmConfig | None = None
_ALL_OPS_CONFIG: VllmConfig | None = None


@contextlib.contextmanager
def vllm_ctx(all_custom_ops: bool = False):
    """A vLLM config context for constructing CustomOps (configs built once per module)."""
    global _DEFAULT_CONFIG, _ALL_OPS_CONFIG
    if all_custom_ops:
        if _ALL_OPS_CONFIG is None:
            _ALL_OPS_CONFIG = VllmConfig(compilation_config=CompilationConfig(custom_ops=["all"]))
        cfg = _ALL_OPS_CONFIG
    else:
        if _DEFAULT_CONFIG is None:
            _DEFAULT_CONFIG = VllmConfig()
        cfg = _DEFAULT_CONFIG
    with set_current_vllm_config(cfg):
        yield


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The plugin registers its ops in every vLLM process; do it here so order does not matter."""
    register_ops()
    yield


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def methods(layer) -> list:
    return [layer.forward_cpu, layer.forward_native]


# --------------------------------------------------------------------------- oracles


def rms_oracle(x: torch.Tensor, w: torch.Tensor | None, eps: float, var_size: int | None = None):
    x = x.double()
    xv = x if var_size is None else x[..., :var_size]
    rstd = 1.0 / torch.sqrt((xv * xv).sum(-1, keepdim=True) / xv.shape[-1] + eps)
    y = x * rstd
    return y if w is None else y * w.double()


def rotary_oracle(positions, x, cache, head_size, rotary_dim, neox):
    """float64, element by element pairs: neox pairs (i, i + rd/2), GPT-J pairs (2i, 2i+1)."""
    half = rotary_dim // 2
    cs = cache.double()[positions.long()]  # (T, rotary_dim)
    cos, sin = cs[:, :half], cs[:, half:]
    t = x.shape[0]
    h = x.double().reshape(t, -1, head_size).clone()
    out = h.clone()
    for i in range(half):
        a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
        c, s = cos[:, i : i + 1], sin[:, i : i + 1]  # (T, 1) over heads
        out[:, :, a] = h[:, :, a] * c - h[:, :, b] * s
        out[:, :, b] = h[:, :, b] * c + h[:, :, a] * s
    return out.reshape(x.shape)


def silu_mul_oracle(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    d = x.shape[-1] // 2
    a, b = x[..., :d], x[..., d:]
    return a / (1.0 + torch.exp(-a)) * b


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype, (got.dtype, dtype)
    assert tuple(got.shape) == tuple(want.shape), (tuple(got.shape), tuple(want.shape))
    torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])


# --------------------------------------------------------------------------- RMSNorm


def make_rms(hidden: int, eps: float, seed: int, dtype=torch.float32, **kw) -> AscendRMSNorm:
    with vllm_ctx():
        layer = AscendRMSNorm(hidden, eps=eps, dtype=dtype, **kw)
    if layer.has_weight:
        with torch.no_grad():
            layer.weight.copy_(torch.randn(hidden, generator=gen(seed + 1)) * 2)
    return layer


@given(
    tokens=st.integers(1, 33),
    hidden=st.sampled_from([1, 2, 3, 7, 8, 16, 31, 64, 67]),
    eps=st.sampled_from([1e-6, 1e-5, 1e-2]),
    residual=st.booleans(),
    lead3d=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_rms_norm_matches_float64(tokens, hidden, eps, residual, lead3d, dtype, seed):
    layer = make_rms(hidden, eps, seed, dtype)
    shape = (2, tokens, hidden) if lead3d else (tokens, hidden)
    x = (torch.randn(shape, generator=gen(seed)) * 3).to(dtype)
    r = (torch.randn(shape, generator=gen(seed + 2)) * 3).to(dtype)
    w = layer.weight.detach()
    for fwd in methods(layer):
        with torch.no_grad():
            if not residual:
                y = fwd(x.clone())
                assert isinstance(y, torch.Tensor)
                close(y, rms_oracle(x, w, eps), dtype)
            else:
                x0, r0 = x.clone(), r.clone()
                y, s = fwd(x0, r0)
                want_s = (x.double() + r.double()).to(dtype)  # x + residual in x's dtype
                close(s, want_s, dtype)
                # The normed value is of that rounded sum (torch_npu and vLLM both do so).
                close(y, rms_oracle(want_s, w, eps), dtype)


@given(
    tokens=st.integers(1, 33),
    hidden=st.sampled_from([1, 3, 8, 17, 64]),
    residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rms_norm_matches_upstream_vllm(tokens, hidden, residual, seed):
    layer = make_rms(hidden, 1e-6, seed)
    x = torch.randn(tokens, hidden, generator=gen(seed)) * 3
    r = torch.randn(tokens, hidden, generator=gen(seed + 2))
    with torch.no_grad():
        if residual:
            want = RMSNorm.forward_native(layer, x.clone(), r.clone())
            for fwd in methods(layer):
                got = fwd(x.clone(), r.clone())
                assert len(got) == 2
                for g, w in zip(got, want):
                    close(g, w, torch.float32)
        else:
            want = RMSNorm.forward_native(layer, x.clone())
            for fwd in methods(layer):
                close(fwd(x.clone()), want, torch.float32)


@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_weightless_and_partial_variance(residual):
    """has_weight=False and var_hidden_size fall back to vLLM's path; values still correct."""
    x = torch.randn(5, 12, generator=gen(3))
    r = torch.randn(5, 12, generator=gen(4))
    for kw, w_of, var in (
        (dict(has_weight=False), lambda layer: None, None),
        (dict(var_hidden_size=5), lambda layer: layer.weight.detach(), 5),
    ):
        layer = make_rms(12, 1e-5, 9, **kw)
        for fwd in methods(layer):
            with torch.no_grad():
                if residual:
                    y, s = fwd(x.clone(), r.clone())
                    close(s, x.double() + r.double(), torch.float32)
                    close(y, rms_oracle(x + r, w_of(layer), 1e-5, var), torch.float32)
                else:
                    y = fwd(x.clone())
                    close(y, rms_oracle(x, w_of(layer), 1e-5, var), torch.float32)


def test_rms_norm_dispatch_default_and_all_custom_ops():
    """Through ``forward`` (vLLM's dispatch): default config and custom_ops=["all"]."""
    x = torch.randn(4, 10, generator=gen(1))
    r = torch.randn(4, 10, generator=gen(2))
    for all_ops in (False, True):
        with vllm_ctx(all_custom_ops=all_ops):
            layer = RMSNorm(10, eps=1e-6)
        assert type(layer) is AscendRMSNorm
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(-2, 2, 10))
            close(layer(x), rms_oracle(x, layer.weight, 1e-6), torch.float32)
            y, s = layer(x, r)
            close(y, rms_oracle(x + r, layer.weight, 1e-6), torch.float32)
            close(s, x.double() + r.double(), torch.float32)


# --------------------------------------------------------------------------- rotary


@st.composite
def rotary_cases(draw):
    head_size = draw(st.sampled_from([2, 4, 6, 8, 16, 32, 64, 80]))
    partial = draw(st.booleans()) and head_size > 2
    if partial:
        rotary_dim = 2 * draw(st.integers(1, head_size // 2 - 1))
    else:
        rotary_dim = head_size
    return dict(
        tokens=draw(st.integers(1, 33)),
        heads=draw(st.integers(1, 4)),
        kv_heads=draw(st.integers(1, 4)),
        head_size=head_size,
        rotary_dim=rotary_dim,
        neox=draw(st.booleans()),
        with_key=draw(st.booleans()),
        three_d=draw(st.booleans()),
        random_cache=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


MAX_POS = 64


def make_rope(head_size, rotary_dim, neox, dtype=torch.float32, cls=AscendRotaryEmbedding):
    with vllm_ctx():
        return cls(head_size, rotary_dim, MAX_POS, 10000.0, neox, dtype)


def rope_inputs(c, dtype=torch.float32):
    g = gen(c["seed"])
    t, hs = c["tokens"], c["head_size"]
    positions = torch.randint(0, MAX_POS, (t,), generator=g)
    q_shape = (t, c["heads"], hs) if c["three_d"] else (t, c["heads"] * hs)
    k_shape = (t, c["kv_heads"], hs) if c["three_d"] else (t, c["kv_heads"] * hs)
    q = torch.randn(q_shape, generator=g).to(dtype)
    k = torch.randn(k_shape, generator=g).to(dtype) if c["with_key"] else None
    return positions, q, k


@given(rotary_cases())
def test_rotary_matches_float64(c):
    layer = make_rope(c["head_size"], c["rotary_dim"], c["neox"])
    assert layer.rotary_dim == c["rotary_dim"]
    if c["random_cache"]:
        # Arbitrary cos|sin tables catch a swapped half or sign that true cos/sin could hide.
        layer.cos_sin_cache = torch.randn(MAX_POS, c["rotary_dim"], generator=gen(c["seed"] + 7))
    cache = layer.cos_sin_cache.clone()
    positions, q, k = rope_inputs(c)
    for fwd in methods(layer):
        q_out, k_out = fwd(positions, q.clone(), None if k is None else k.clone())
        args = (cache, c["head_size"], c["rotary_dim"], c["neox"])
        close(q_out, rotary_oracle(positions, q, *args), torch.float32)
        if k is None:
            assert k_out is None
        else:
            close(k_out, rotary_oracle(positions, k, *args), torch.float32)
        # Features past rotary_dim pass through bit for bit.
        rd, hs = c["rotary_dim"], c["head_size"]
        qh = q_out.reshape(c["tokens"], -1, hs)
        assert torch.equal(qh[..., rd:], q.reshape(c["tokens"], -1, hs)[..., rd:])


@given(rotary_cases())
def test_rotary_matches_upstream_vllm(c):
    layer = make_rope(c["head_size"], c["rotary_dim"], c["neox"])
    positions, q, k = rope_inputs(c)
    clone_k = (lambda: None) if k is None else k.clone
    want_q, want_k = RotaryEmbedding.forward_native(layer, positions, q.clone(), clone_k())
    for fwd in methods(layer):
        got_q, got_k = fwd(positions, q.clone(), clone_k())
        close(got_q, want_q, torch.float32)
        if k is None:
            assert got_k is None
        else:
            close(got_k, want_k, torch.float32)


@pytest.mark.parametrize("neox", [True, False])
def test_rotary_bf16_and_identity_at_position_zero(neox):
    layer = make_rope(16, 8, neox, dtype=torch.bfloat16)
    c = dict(tokens=9, heads=3, kv_heads=1, head_size=16, seed=5, three_d=False, with_key=True)
    positions, q, k = rope_inputs(c, torch.bfloat16)
    q_out, k_out = layer.forward_native(positions, q.clone(), k.clone())
    cache = layer.cos_sin_cache
    close(q_out, rotary_oracle(positions, q, cache, 16, 8, neox), torch.bfloat16)
    close(k_out, rotary_oracle(positions, k, cache, 16, 8, neox), torch.bfloat16)
    # Position 0 is cos=1, sin=0: the identity.
    zero = torch.zeros(9, dtype=torch.long)
    q0, k0 = layer.forward_native(zero, q.clone(), k.clone())
    assert torch.equal(q0, q) and torch.equal(k0, k)


@pytest.mark.parametrize("neox", [True, False])
def test_rotary_on_qkv_split_views(neox):
    """vLLM attention passes q and k as non-contiguous views of one qkv projection."""
    t, heads, kv_heads, hs, rd = 6, 4, 2, 16, 8
    layer = make_rope(hs, rd, neox)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * hs, generator=gen(8))
    q, k, _v = qkv.split([heads * hs, kv_heads * hs, kv_heads * hs], dim=-1)
    assert not q.is_contiguous() and not k.is_contiguous()
    positions = torch.randint(0, MAX_POS, (t,), generator=gen(9))
    want_q, want_k = RotaryEmbedding.forward_native(layer, positions, q.clone(), k.clone())
    got_q, got_k = layer.forward_native(positions, q, k)
    cache = layer.cos_sin_cache
    close(got_q, rotary_oracle(positions, q, cache, hs, rd, neox), torch.float32)
    close(got_k, rotary_oracle(positions, k, cache, hs, rd, neox), torch.float32)
    close(got_q, want_q, torch.float32)
    close(got_k, want_k, torch.float32)


@pytest.mark.parametrize("neox", [True, False])
def test_rotary_accepts_batched_positions_like_upstream(neox):
    layer = make_rope(8, 8, neox)
    positions = torch.randint(0, MAX_POS, (2, 3), generator=gen(1))
    q = torch.randn(2, 3, 2 * 8, generator=gen(2))
    k = torch.randn(2, 3, 1 * 8, generator=gen(3))
    want_q, want_k = RotaryEmbedding.forward_native(layer, positions, q.clone(), k.clone())
    got_q, got_k = layer.forward_native(positions, q.clone(), k.clone())
    close(got_q, want_q, torch.float32)
    close(got_k, want_k, torch.float32)


def test_rotary_through_vllm_constructor_and_dispatch():
    for all_ops in (False, True):
        with vllm_ctx(all_custom_ops=all_ops):
            layer = RotaryEmbedding(32, 32, MAX_POS, 10000.0, True, torch.float32)
        assert type(layer) is AscendRotaryEmbedding
        c = dict(tokens=7, heads=2, kv_heads=2, head_size=32, seed=11, three_d=False, with_key=True)
        positions, q, k = rope_inputs(c)
        q_out, k_out = layer(positions, q.clone(), k.clone())
        cache = layer.cos_sin_cache
        close(q_out, rotary_oracle(positions, q, cache, 32, 32, True), torch.float32)
        close(k_out, rotary_oracle(positions, k, cache, 32, 32, True), torch.float32)


# --------------------------------------------------------------------------- SiluAndMul


@given(
    tokens=st.integers(1, 33),
    d=st.integers(1, 40),
    lead3d=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_silu_and_mul_matches_float64_and_upstream(tokens, d, lead3d, dtype, seed):
    with vllm_ctx():
        layer = AscendSiluAndMul()
    shape = (2, tokens, 2 * d) if lead3d else (tokens, 2 * d)
    x = (torch.randn(shape, generator=gen(seed)) * 4).to(dtype)
    want = silu_mul_oracle(x)
    for fwd in methods(layer):
        got = fwd(x.clone())
        close(got, want, dtype)
        if dtype == torch.float32:
            close(got, SiluAndMul.forward_native(x.clone()), dtype)


def test_silu_and_mul_through_vllm_constructor():
    with vllm_ctx(all_custom_ops=True):
        layer = SiluAndMul()
    assert type(layer) is AscendSiluAndMul
    x = torch.randn(5, 14, generator=gen(0))
    close(layer(x), silu_mul_oracle(x), torch.float32)


# --------------------------------------------------------------------------- registry


def test_register_ops_maps_vllm_names_to_ascend_classes():
    register_ops()
    assert EXPECTED.items() <= replacements().items()  # the MoE ones: tests/ut/moe
    for name, cls in EXPECTED.items():
        assert custom_op.op_registry_oot[name] is cls
        assert cls.name == name  # set by CustomOp.register_oot


def test_register_ops_second_call_registers_nothing():
    register_ops()
    before = dict(custom_op.op_registry_oot)
    assert register_ops() == []
    assert register_ops() == []
    assert custom_op.op_registry_oot == before


def test_register_ops_reregisters_only_missing(monkeypatch):
    monkeypatch.delitem(custom_op.op_registry_oot, "SiluAndMul")
    assert register_ops() == ["SiluAndMul"]
    assert custom_op.op_registry_oot["SiluAndMul"] is AscendSiluAndMul


def test_register_ops_refuses_foreign_replacement(monkeypatch):
    class OtherRMSNorm(RMSNorm):
        pass

    monkeypatch.setitem(custom_op.op_registry_oot, "RMSNorm", OtherRMSNorm)
    with pytest.raises(RuntimeError, match="RMSNorm.*OtherRMSNorm"):
        register_ops()
    assert custom_op.op_registry_oot["RMSNorm"] is OtherRMSNorm


def test_vllm_constructors_yield_ascend_classes():
    with vllm_ctx():
        norm = RMSNorm(16, eps=1e-5)
        rope = RotaryEmbedding(8, 8, 16, 10000.0, False, torch.float32)
        act = SiluAndMul()
    assert type(norm) is AscendRMSNorm and isinstance(norm, RMSNorm)
    assert type(rope) is AscendRotaryEmbedding and isinstance(rope, RotaryEmbedding)
    assert type(act) is AscendSiluAndMul and isinstance(act, SiluAndMul)
    # __init__ ran with the arguments given to vLLM's class.
    assert norm.variance_epsilon == 1e-5 and norm.weight.shape == (16,)
    assert rope.is_neox_style is False and rope.cos_sin_cache.shape == (16, 8)


# --------------------------------------------------------------------------- torch.compile


def _compile_cases():
    g = gen(42)
    x = torch.randn(4, 8, generator=g)
    res = torch.randn(4, 8, generator=g)
    w = torch.randn(8, generator=g)
    q = torch.randn(4, 3, 8, generator=g)
    r1 = torch.randn(4, 1, 8, generator=g)
    r2 = torch.randn(4, 1, 8, generator=g)
    return {
        "npu_rms_norm": (lambda x, w: ops.npu_rms_norm(x, w, 1e-6)[0], (x, w)),
        "npu_add_rms_norm": (lambda a, b, w: ops.npu_add_rms_norm(a, b, w, 1e-6), (x, res, w)),
        "npu_swiglu": (lambda x: ops.npu_swiglu(x, dim=-1), (x,)),
        "npu_rotary_mul": (
            lambda q, r1, r2: ops.npu_rotary_mul(q, r1, r2, rotary_mode="interleave"),
            (q, r1, r2),
        ),
    }


@pytest.mark.parametrize("name", sorted(_compile_cases()))
def test_facade_ops_trace_in_torch_compile_fullgraph(name):
    fn, args = _compile_cases()[name]
    ops.bind()
    eager = fn(*args)
    compiled = torch.compile(fn, backend="eager", fullgraph=True)(*args)
    eager = eager if isinstance(eager, tuple) else (eager,)
    compiled = compiled if isinstance(compiled, tuple) else (compiled,)
    assert len(eager) == len(compiled)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=0, atol=0)


def test_layers_trace_in_torch_compile_fullgraph():
    """The compiled path (custom op disabled -> forward_native) traces without graph breaks."""
    ops.bind()
    norm = make_rms(8, 1e-6, 1)
    rope = make_rope(8, 4, False)
    with vllm_ctx():
        act = AscendSiluAndMul()
    x = torch.randn(5, 8, generator=gen(0))
    r = torch.randn(5, 8, generator=gen(1))
    pos = torch.arange(5)
    q = torch.randn(5, 16, generator=gen(2))
    with torch.no_grad():
        for fn, args in (
            (norm.forward_native, (x,)),
            (norm.forward_native, (x, r)),
            (rope.forward_native, (pos, q, q.clone())),
            (act.forward_native, (x,)),
        ):
            eager = fn(*args)
            compiled = torch.compile(fn, backend="eager", fullgraph=True)(*args)
            eager = eager if isinstance(eager, tuple) else (eager,)
            compiled = compiled if isinstance(compiled, tuple) else (compiled,)
            for e, c in zip(eager, compiled):
                torch.testing.assert_close(c, e)
