"""``vllm_ascend.tools.quantize``: checkpoints the plugin's schemes load, on tiny models.

- every scheme writes the tensors docs/quantization.md lists (names, dtypes, shapes), a
  description naming every tensor (FLOAT for embeddings, norms, lm_head, router) and config;
- dequantizing the written tensors gives back the fp32 weights within the quantization
  error bound (``|w - q s| <= s / 2``);
- round trip: the schemes' create_weights + vLLM's own weight loaders + process_weights_after
  _loading + apply on the written tensors approximate the fp32 linear (and reproduce the
  scheme's math on the dequantized weights exactly where it is weight-only);
- both W4A8_DYNAMIC formats load to identical internal tensors (linear and experts);
- MoE: per-expert tensors, the DeepSeek W4A8 layout and ``--moe-scheme``;
- ``--lm-head``: int8 ``lm_head.*`` tensors (tied sources untied), loaded by vLLM's
  ``ParallelLMHead`` through the plugin's lm_head method;
- compressed-tensors: the config parses into the expected schemes and loads;
- bad input fails with a clear message, and never leaves a half-written directory.

The dense model is a random LlamaForCausalLM built here (hidden 64, 2 layers, no tokenizer:
static calibration uses random token ids); the MoE ones come from ``tools.tiny_model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.ut.quantization.conftest import vllm_ctx, vllm_dist  # noqa: F401 - fixtures
from vllm_ascend.quantization.description import parse_description
from vllm_ascend.quantization.methods._int4 import unpack_int4_pairs
from vllm_ascend.quantization.methods.w4a4_flatquant import kronecker_dims
from vllm_ascend.tools import quantize_ct
from vllm_ascend.tools import quantize_math as qm
from vllm_ascend.tools.quantize import main, quantize
from vllm_ascend.tools.quantize_plan import QuantizeError

HIDDEN, INTER, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 128, 2, 1, 2, 256
HEAD_DIM = HIDDEN // HEADS
GROUP = 32
SCHEMES = ["W8A8_DYNAMIC", "W8A8", "W8A16", "W4A16", "W4A8_DYNAMIC", "W4A4_FLATQUANT_DYNAMIC"]
PROJ = {  # checkpoint projection -> (N, K)
    "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
    "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}
ROW = ("self_attn.o_proj", "mlp.down_proj")
F32, I8, I32 = torch.float32, torch.int8, torch.int32


# ----------------------------------------------------------------------- fixtures

def tiny_llama(path: Path, outlier: float = 8.0, tied: bool = False) -> Path:
    """A random LlamaForCausalLM (fp32 safetensors) whose embedding has 4 outlier channels
    (``outlier`` x the others), as real activations have; ``tied``: the lm_head is the input
    embedding (no ``lm_head.weight`` in the checkpoint, like SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, num_hidden_layers=LAYERS,
                         vocab_size=VOCAB, max_position_embeddings=256,
                         tie_word_embeddings=tied, architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, :4] *= outlier
    model.save_pretrained(path)
    (path / "tokenizer_config.json").write_text("{}\n")  # copied verbatim, never parsed
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("src") / "llama")


@pytest.fixture(scope="module")
def written(llama, tmp_path_factory):
    """Quantized checkpoints, cached per (scheme, options)."""
    root, cache = tmp_path_factory.mktemp("quant"), {}

    def get(scheme: str, **kw) -> Path:
        kw.setdefault("group_size", GROUP if scheme == "W4A8_DYNAMIC" else None)
        if scheme in ("W8A8", "W8A8_DYNAMIC"):  # the plain math; smoothing has its own tests
            kw.setdefault("smooth_alpha", 0.0)
        key = (scheme, tuple(sorted(kw.items())))
        if key not in cache:
            out = root / f"{scheme}-{len(cache)}"
            cache[key] = quantize(llama, scheme, out, progress=False, calib_prompts=4, **kw)
        return cache[key]
    return get


def source_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    desc = json.loads((path / "quant_model_description.json").read_text())
    return load_file(str(path / "model.safetensors")), desc


def prefixes():
    return [(f"model.layers.{i}.{p}", p) for i in range(LAYERS) for p in PROJ]


# ----------------------------------------------------------------------- layouts

def expected(scheme: str, proj: str, group: int, packed: bool = True) -> dict:
    n, k = PROJ[proj]
    ch = {"weight_scale": ((n, 1), F32), "weight_offset": ((n, 1), F32)}
    if scheme == "W8A8_DYNAMIC":
        return {"weight": ((n, k), I8), **ch}
    if scheme == "W8A8":
        return {"weight": ((n, k), I8), **ch, "input_scale": ((1,), F32),
                "input_offset": ((1,), F32), "deq_scale": ((n,), F32), "quant_bias": ((n,), I32)}
    if scheme in ("W8A16", "W4A16"):
        return {"weight": ((n, k), I8), **ch}
    if scheme == "W4A8_DYNAMIC":
        out = {"weight": ((n // 2, k) if packed else (n, k), I8), **ch,
               "weight_scale_second": ((n, k // group), F32),
               "weight_offset_second": ((n, k // group), F32)}
        if packed:
            out["scale_bias"] = ((n, 16 if proj in ROW else 1), F32)
        return out
    k1, k2 = kronecker_dims(k)
    return {"weight": ((n, k), I8), **ch, "left_trans": ((k1, k1), F32),
            "right_trans": ((k2, k2), F32), "clip_ratio": ((1,), F32)}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_writes_documented_tensors(written, llama, scheme):
    out = written(scheme)
    tensors, desc = read(out)
    group = GROUP if scheme == "W4A8_DYNAMIC" else 0
    for prefix, proj in prefixes():
        want = expected(scheme, proj, group)
        got = {k.removeprefix(prefix + "."): (tuple(v.shape), v.dtype)
               for k, v in tensors.items() if k.startswith(prefix + ".")}
        assert got == want, prefix
        assert all(desc[f"{prefix}.{s}"] == scheme for s in want)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.0.input_layernorm.weight"):
        assert desc[name] == "FLOAT" and tensors[name].dtype == F32
    assert set(desc) - {"model_quant_type", "version", "group_size", "metadata"} == set(tensors)
    assert desc["model_quant_type"] == scheme and desc["group_size"] == group
    parsed = parse_description(desc, str(out))  # every type is a registered scheme
    assert parsed.quant_type_for("model.layers.0.self_attn.qkv_proj",
                                 {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}) == scheme
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "ascend"}
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (out / "tokenizer_config.json").read_text() == "{}\n"
    assert (out / "generation_config.json").is_file() == \
        (llama / "generation_config.json").is_file()
    assert not list(out.parent.glob(f".{out.name}-*"))  # no temp dir left


def test_no_quantization_config_and_version(written):
    config = json.loads((written("W8A8_DYNAMIC", quantization_config=False) / "config.json")
                        .read_text())
    assert "quantization_config" not in config
    assert read(written("W4A8_DYNAMIC"))[1]["version"] == "1.0.0"
    assert read(written("W4A8_DYNAMIC", w4a8_format="legacy"))[1]["version"] == "0"


# ----------------------------------------------------------------------- dequantization bound

def effective(tensors: dict, prefix: str, k: int) -> torch.Tensor:
    s = tensors[f"{prefix}.weight_scale"].double()
    second = tensors.get(f"{prefix}.weight_scale_second")
    if second is not None:  # the scheme multiplies the two in fp32
        s = (tensors[f"{prefix}.weight_scale"].float() * second.float()).double()
    return qm.expand(s, k)


def values(tensors: dict, prefix: str, n: int) -> torch.Tensor:
    w = tensors[f"{prefix}.weight"]
    return unpack_int4_pairs(w, dim=0) if w.shape[0] != n else w


@pytest.mark.parametrize("scheme,kw", [
    ("W8A8_DYNAMIC", {}), ("W8A8", {}), ("W8A16", {}), ("W8A16", {"group_size": 16}),
    ("W4A16", {}), ("W4A16", {"group_size": 16}), ("W4A8_DYNAMIC", {}),
    ("W4A8_DYNAMIC", {"group_size": 0}), ("W4A8_DYNAMIC", {"w4a8_format": "legacy"}),
    ("W4A4_FLATQUANT_DYNAMIC", {}), ("W4A4_FLATQUANT_DYNAMIC", {"flatquant_transform": "identity"}),
])
def test_dequantized_within_half_a_step(written, llama, scheme, kw):
    src = source_weights(llama)
    tensors, _ = read(written(scheme, **kw))
    lo, hi = (-8, 7) if scheme.startswith("W4") else (-127, 127)
    for prefix, proj in prefixes():
        n, k = PROJ[proj]
        w = src[f"{prefix}.weight"].double()
        q = values(tensors, prefix, n)
        assert int(q.min()) >= lo and int(q.max()) <= hi
        s = effective(tensors, prefix, k)
        if scheme == "W4A4_FLATQUANT_DYNAMIC":
            left, right = tensors[f"{prefix}.left_trans"], tensors[f"{prefix}.right_trans"]
            for p in (left, right):  # orthogonal: the inverse transform is the transpose
                assert torch.allclose(p.double() @ p.double().t(), torch.eye(p.shape[0],
                                      dtype=torch.float64), atol=1e-5)
            assert float(tensors[f"{prefix}.clip_ratio"]) == 1.0
            w = qm.flatquant_weight(w, left, right)
        assert torch.all(tensors[f"{prefix}.weight_offset"] == 0)
        err = (w - q.double() * s).abs()
        assert bool((err <= s / 2 * (1 + 1e-5) + 1e-9).all()), (prefix, float((err - s / 2).max()))
    if scheme == "W8A8":  # deq_scale = s_x s_w; quant_bias = -o_x sum_k w (no bias here)
        p = "model.layers.1.mlp.down_proj"
        s_x, o_x = float(tensors[f"{p}.input_scale"]), float(tensors[f"{p}.input_offset"])
        assert o_x == round(o_x) and -128 <= o_x <= 127
        assert torch.equal(tensors[f"{p}.deq_scale"],
                           torch.tensor(s_x, dtype=F32) * tensors[f"{p}.weight_scale"].reshape(-1))
        assert torch.equal(tensors[f"{p}.quant_bias"].long(),
                           (-o_x * tensors[f"{p}.weight"].long().sum(1)).long())


def test_math_helpers():
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    q, s = qm.symmetric(w, 127)
    assert s[1, 0] == 1 and torch.equal(q[1], torch.zeros(4, dtype=I8))  # zero row: scale 1
    assert q[0, 0] == 127 and q[0, 2] == 32 and q[0, 3] == 0
    # static activations: the calibrated range maps to [-128, 127]
    s_x, o_x = qm.activation_qparams(-1.0, 3.0, symmetric_act=False)
    assert round(-1.0 / s_x + o_x) == -128 and round(3.0 / s_x + o_x) == 127
    assert qm.activation_qparams(-1.0, 3.0, symmetric_act=True) == (pytest.approx(3 / 127), 0.0)
    # W8A8 folds a float bias: d (acc + q) == s_x s_w (xq - o) w + b up to d / 2
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 16, generator=gen), torch.randn(8, generator=gen)
    t = qm.w8a8_static(w, 0.02, 5.0, bias=b)
    d = t["deq_scale"].double()
    folded = t["quant_bias"].double() + 5.0 * t["weight"].double().sum(1)
    assert torch.all((folded * d - b.double()).abs() <= d / 2 + 1e-9)
    # scale_bias: 8 sum_k w s, as 16 partial sums
    q4 = torch.randint(-8, 8, (4, 64), generator=gen, dtype=I8)
    sb = qm.scale_bias(q4, torch.full((4, 2), 0.5), 16)
    assert sb.shape == (4, 16) and torch.allclose(sb.sum(1), 4 * q4.double().sum(1).float())


# ----------------------------------------------------------------------- round trip (vLLM layers)

def layer_inputs(llama: Path, n_prompts: int = 3) -> dict[str, torch.Tensor]:
    """Real inputs of layer 1's projections: the fp32 model on random token ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama, dtype=F32)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, a, name=name: seen.setdefault(name, []).append(a[0].reshape(-1, a[0].shape[-1])))
        for name, m in model.named_modules() if name.startswith("model.layers.1.")
        and isinstance(m, torch.nn.Linear)]
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _ in range(n_prompts):
            model(input_ids=torch.randint(0, VOCAB, (1, 12), generator=gen))
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


FUSED = {"qkv_proj": (["q_proj", "k_proj", "v_proj"], ["q", "k", "v"]),
         "gate_up_proj": (["gate_proj", "up_proj"], [0, 1])}
PACKED = {k: v[0] for k, v in FUSED.items()}


def vllm_layer(kind: str, config, prefix: str):
    from vllm.model_executor.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )

    common = dict(bias=False, quant_config=config, prefix=prefix, params_dtype=F32)
    if kind == "qkv_proj":
        return QKVParallelLinear(HIDDEN, HEAD_DIM, HEADS, KV_HEADS, **common)
    if kind == "gate_up_proj":
        return MergedColumnParallelLinear(HIDDEN, [INTER, INTER], **common, return_bias=False)
    k = HIDDEN if kind == "o_proj" else INTER
    return RowParallelLinear(k, HIDDEN, **common, return_bias=False)


def load_layer(kind: str, stem: str, config, tensors: dict):
    """Build the vLLM layer ``<stem>.<kind>`` and feed it the written tensors the way vLLM's
    model loader does (shards of fused layers with their shard ids)."""
    layer = vllm_layer(kind, config, f"{stem}.{kind}")
    params = dict(layer.named_parameters())
    shards, ids = FUSED.get(kind, ([kind], [None]))
    for shard, shard_id in zip(shards, ids):
        head = f"{stem}.{shard}."
        for name, t in tensors.items():
            if name.startswith(head):
                param = params[name[len(head):]]
                args = () if shard_id is None else (shard_id,)
                param.weight_loader(param, t, *args)
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def run(layer, x):
    y = layer(x)
    return y[0] if isinstance(y, tuple) else y


def float_weight(src, stem, kind):
    shards = FUSED.get(kind, ([kind], None))[0]
    return torch.cat([src[f"{stem}.{s}.weight"] for s in shards]).double()


def modelslim_config(out: Path):
    from vllm_ascend.quantization.modelslim_config import AscendQuantConfig

    desc = json.loads((out / "quant_model_description.json").read_text())
    config = AscendQuantConfig(parse_description(desc, str(out)), str(out))
    config.packed_modules_mapping = dict(PACKED)
    return config


def rel(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


#: loose bound vs the fp32 layer (relative Frobenius error) per scheme
FP32_TOL = {"W8A8_DYNAMIC": 0.03, "W8A8": 0.08, "W8A16": 0.01, "W4A16": 0.2, "W4A8_DYNAMIC": 0.2,
            "W4A4_FLATQUANT_DYNAMIC": 0.35}


@pytest.mark.usefixtures("vllm_ctx")
@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_through_schemes(written, llama, scheme):
    out = written(scheme)
    tensors, _ = read(out)
    src = source_weights(llama)
    inputs = layer_inputs(llama)
    config = modelslim_config(out)
    stem_attn, stem_mlp = "model.layers.1.self_attn", "model.layers.1.mlp"
    for stem, kind, first in ((stem_attn, "qkv_proj", "q_proj"), (stem_attn, "o_proj", "o_proj"),
                              (stem_mlp, "gate_up_proj", "gate_proj"),
                              (stem_mlp, "down_proj", "down_proj")):
        layer = load_layer(kind, stem, config, tensors)
        assert type(layer.quant_method.scheme).quant_type == scheme
        x = inputs[f"{stem}.{first}"]
        y = run(layer, x)
        ref = x.double() @ float_weight(src, stem, kind).t()
        assert rel(y, ref) < FP32_TOL[scheme], (kind, rel(y, ref))
        # the scheme's own math on the dequantized weights (exact up to fp32 rounding)
        shards = FUSED.get(kind, ([kind], None))[0]
        deq = torch.cat([values(tensors, f"{stem}.{s}", PROJ[proj_of(s)][0]).double()
                         * effective(tensors, f"{stem}.{s}", x.shape[1]) for s in shards])
        xs = quantized_input(scheme, x, tensors, f"{stem}.{shards[0]}")
        if xs is not None:
            assert rel(y, xs @ deq.t()) < 1e-5, (kind, rel(y, xs @ deq.t()))


def proj_of(shard: str) -> str:
    return next(p for p in PROJ if p.endswith("." + shard))


def quantized_input(scheme, x, tensors, prefix):
    """x as the scheme quantizes it (float64), or None when not a simple closed form."""
    if scheme in ("W8A16", "W4A16"):
        return x.double()
    if scheme in ("W8A8_DYNAMIC", "W4A8_DYNAMIC"):
        s = x.abs().amax(dim=1, keepdim=True) / 127
        return torch.round(x / s).clamp(-127, 127).double() * s.double()
    if scheme == "W8A8":
        s_x = tensors[f"{prefix}.input_scale"]
        o_x = float(tensors[f"{prefix}.input_offset"])
        xq = torch.round(x / s_x + o_x).clamp(-128, 127)
        return (xq.double() - o_x) * s_x.double()
    return None


@pytest.mark.usefixtures("vllm_ctx")
def test_w4a8_formats_load_identically(written):
    new, _ = read(written("W4A8_DYNAMIC"))
    legacy, _ = read(written("W4A8_DYNAMIC", w4a8_format="legacy"))
    assert new.keys() - legacy.keys() == {f"{p}.scale_bias" for p, _ in prefixes()}
    configs = (modelslim_config(written("W4A8_DYNAMIC")),
               modelslim_config(written("W4A8_DYNAMIC", w4a8_format="legacy")))
    for stem, kind in (("model.layers.0.self_attn", "qkv_proj"),
                       ("model.layers.0.mlp", "down_proj")):
        a = load_layer(kind, stem, configs[0], new)
        b = load_layer(kind, stem, configs[1], legacy)
        state_a, state_b = dict(a.named_parameters()), dict(b.named_parameters())
        assert state_a.keys() == state_b.keys() == {"weight", "weight_scale", "scale_bias"}
        for name in state_a:
            assert torch.equal(state_a[name], state_b[name]), (kind, name)


# ----------------------------------------------------------------------- smoothing

def logits(model, prompts):
    with torch.no_grad():
        return torch.cat([model(input_ids=p).logits[0] for p in prompts]).double()


def random_prompts(n=4, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (1, 16), generator=gen) for _ in range(n)]


def test_smoothing_preserves_the_float_model(llama):
    from transformers import AutoConfig, AutoModelForCausalLM

    from vllm_ascend.tools.quantize import Source
    from vllm_ascend.tools.quantize_calib import layer_stats
    from vllm_ascend.tools.quantize_smooth import SmoothedSource, plan_smoothing

    source = Source(llama)
    types = {p: "W8A8" for p, _ in prefixes()}
    stats = layer_stats(str(llama), None, sorted(types), 4, VOCAB, 0, False)
    smoothing = plan_smoothing(source, types, stats, AutoConfig.from_pretrained(llama), 0.5)
    assert smoothing.groups == 4 * LAYERS  # qkv, o (GQA: 2 query heads per kv head), gate_up, down
    smoothed = SmoothedSource(source, smoothing)
    model = AutoModelForCausalLM.from_pretrained(llama, dtype=F32)
    ref = logits(model, random_prompts())
    model.load_state_dict({n: smoothed.get(n) for n in smoothed.names()}, strict=False)
    assert not torch.equal(model.model.layers[0].input_layernorm.weight,
                           source.get("model.layers.0.input_layernorm.weight"))
    assert rel(logits(model, random_prompts()), ref) < 1e-5
    # the outlier channels of the embedding (x8) no longer dominate q_proj's input range
    lo, hi = stats["model.layers.0.self_attn.q_proj"]
    amax = torch.maximum(lo.abs(), hi.abs())
    smoothed_amax = amax / smoothing.act["model.layers.0.self_attn.q_proj"]
    assert float(smoothed_amax.max() / smoothed_amax.median()) < float(amax.max() / amax.median())


def fake_quantized(llama, out):
    """The source model with the checkpoint's float tensors, dequantized W8A8 weights and
    the static activation quantization of each layer (float64 math, fp32 storage)."""
    from transformers import AutoModelForCausalLM

    tensors, desc = read(out)
    model = AutoModelForCausalLM.from_pretrained(llama, dtype=F32)
    state = {n: t for n, t in tensors.items() if desc[n] == "FLOAT"}
    model.load_state_dict(state, strict=False)
    for prefix, _ in prefixes():
        module = model.get_submodule(prefix)
        module.weight.data = (tensors[f"{prefix}.weight"].double()
                              * tensors[f"{prefix}.weight_scale"].double()).float()
        s_x = tensors[f"{prefix}.input_scale"]
        o_x = float(tensors[f"{prefix}.input_offset"])
        module.register_forward_pre_hook(
            lambda _m, a, s_x=s_x, o_x=o_x: ((torch.round(a[0] / s_x + o_x).clamp(-128, 127)
                                              - o_x) * s_x,))
    return model


def test_w8a8_default_smoothing_improves_the_model(tmp_path):
    """Strong outlier channels (x100): smoothing (the W8A8 default, alpha 0.5) must bring
    the fake-quantized model's logits closer to fp32 than plain min/max calibration."""
    from transformers import AutoModelForCausalLM

    src = tiny_llama(tmp_path / "outliers", outlier=100.0)
    plain = quantize(src, "W8A8", tmp_path / "plain", smooth_alpha=0.0, progress=False)
    smooth = quantize(src, "W8A8", tmp_path / "smooth", progress=False)
    assert read(smooth)[1]["metadata"]["smoothing"] == {
        "method": "SmoothQuant (folded into norms / v_proj / up_proj)", "alpha": 0.5,
        "groups": 4 * LAYERS}
    ref = logits(AutoModelForCausalLM.from_pretrained(src, dtype=F32), random_prompts())
    err_plain = rel(logits(fake_quantized(src, plain), random_prompts()), ref)
    err_smooth = rel(logits(fake_quantized(src, smooth), random_prompts()), ref)
    print(f"W8A8 logits error vs fp32: plain {err_plain:.4f}, smoothed {err_smooth:.4f}")
    assert err_smooth < 0.7 * err_plain, (err_smooth, err_plain)


# ----------------------------------------------------------------------- MoE

@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    from vllm_ascend.tools.tiny_model import generate

    tok = tmp_path_factory.mktemp("tok")
    (tok / "tokenizer.json").write_text('{"stand-in": true}\n')
    root = tmp_path_factory.mktemp("moe")
    return {arch: generate(arch, root / arch, layers=2, tokenizer_dir=tok)
            for arch in ("qwen3_moe", "deepseek_v3")}


def moe_layer_tensors(tensors, moe: str, experts: int, packed: bool):
    """What vLLM's expert loader assembles: w13 = gate rows then up rows, w2 = down."""
    out = {}
    for stem, projs in (("w13", ("gate_proj", "up_proj")), ("w2", ("down_proj",))):
        for src, dst in (("weight", "weight"), ("weight_scale", "weight_scale"),
                         ("weight_offset", "weight_offset"),
                         ("weight_scale_second", "weight_scale_second"),
                         ("weight_offset_second", "weight_offset_second"),
                         ("scale_bias", "scale_bias")):
            parts = [[tensors.get(f"{moe}.{e}.{p}.{src}") for p in projs] for e in range(experts)]
            if parts[0][0] is None:
                continue
            name = f"{stem}_{dst}" if src != "scale_bias" else f"{stem}_scale_bias"
            out[name] = torch.stack([torch.cat(ps) for ps in parts])
    return out


def moe_reference(x, src, moe, experts, counts):
    y, start = [], 0
    for e in range(experts):
        xe = x[start:start + counts[e]].double()
        start += counts[e]
        g, u, d = (src[f"{moe}.{e}.{p}.weight"].double()
                   for p in ("gate_proj", "up_proj", "down_proj"))
        y.append((torch.nn.functional.silu(xe @ g.t()) * (xe @ u.t())) @ d.t())
    return torch.cat(y)


@pytest.mark.parametrize("scheme,fmt", [("W8A8_DYNAMIC", "new"), ("W4A8_DYNAMIC", "new"),
                                        ("W4A8_DYNAMIC", "legacy")])
def test_moe_experts(tiny_moe, tmp_path, scheme, fmt):
    from tests.ut.quantization._w4_helpers import scheme as make_scheme

    out = quantize(tiny_moe["qwen3_moe"], scheme, tmp_path / "q", progress=False,
                   w4a8_format=fmt, moe_scheme=scheme)
    tensors, desc = read(out)
    src = source_weights(tiny_moe["qwen3_moe"])
    moe, experts, h, i = "model.layers.1.mlp.experts", 16, 128, 64
    group = desc["group_size"]
    assert desc[f"{moe}.3.gate_proj.weight"] == scheme
    assert desc["model.layers.1.mlp.gate.weight"] == "FLOAT"
    assert desc["model.layers.1.self_attn.q_proj.weight"] == scheme
    if scheme == "W4A8_DYNAMIC":
        assert group == 64  # 256 does not divide I = 64: the largest power of two that does
        rows = i // 2 if fmt == "new" else i
        assert tensors[f"{moe}.0.gate_proj.weight"].shape == (rows, h)
        assert tensors[f"{moe}.0.down_proj.weight_scale_second"].shape == (h, i // group)
        if fmt == "new":
            assert tensors[f"{moe}.0.down_proj.scale_bias"].shape == (h, 16)
            assert tensors[f"{moe}.0.up_proj.scale_bias"].shape == (i, 1)
    sch = make_scheme(scheme, "moe", {k: v for k, v in desc.items() if "." not in k}, moe)
    layer = torch.nn.Module()
    sch.create_weights(layer, experts, h, i, F32)
    for name, t in moe_layer_tensors(tensors, moe, experts, fmt == "new").items():
        getattr(layer, name).data.copy_(t)
    sch.process_weights_after_loading(layer)
    counts = [3, 0, 5, 1] * 4
    x = torch.randn(sum(counts), h, generator=torch.Generator().manual_seed(0))
    y = sch.apply_experts(layer, x, torch.tensor(counts))
    ref = moe_reference(x, src, moe, experts, counts)
    assert rel(y, ref) < (0.05 if scheme == "W8A8_DYNAMIC" else 0.25), rel(y, ref)


def test_deepseek_w4a8_layout_and_override(tiny_moe, tmp_path):
    src = tiny_moe["deepseek_v3"]
    _, desc = read(quantize(src, "W4A8_DYNAMIC", tmp_path / "a", progress=False))
    moe = "model.layers.1.mlp"
    assert desc[f"{moe}.experts.7.down_proj.weight"] == "W4A8_DYNAMIC"
    for name in ("model.layers.0.self_attn.q_a_proj", "model.layers.1.self_attn.o_proj",
                 "model.layers.0.mlp.gate_proj", f"{moe}.shared_experts.up_proj"):
        assert desc[f"{name}.weight"] == "W8A8_DYNAMIC", name
    for name in ("model.layers.1.self_attn.kv_b_proj.weight", f"{moe}.gate.weight",
                 f"{moe}.gate.e_score_correction_bias", "model.embed_tokens.weight",
                 "lm_head.weight", "model.layers.1.self_attn.kv_a_layernorm.weight"):
        assert desc[name] == "FLOAT", name
    assert desc["model_quant_type"] == "W4A8_DYNAMIC" and desc["version"] == "1.0.0"
    _, desc = read(quantize(src, "W8A8_DYNAMIC", tmp_path / "b", progress=False,
                            moe_scheme="W4A8_DYNAMIC"))
    assert desc[f"{moe}.experts.0.gate_proj.weight"] == "W4A8_DYNAMIC"
    assert desc["model.layers.1.self_attn.q_b_proj.weight"] == "W8A8_DYNAMIC"
    _, desc = read(quantize(src, "W4A8_DYNAMIC", tmp_path / "c", progress=False,
                            moe_scheme="W8A8_DYNAMIC"))
    assert desc[f"{moe}.experts.0.gate_proj.weight"] == "W8A8_DYNAMIC"
    assert desc["model.layers.1.self_attn.q_b_proj.weight"] == "W4A8_DYNAMIC"


# ----------------------------------------------------------------------- compressed-tensors

CT_TYPES = ["W8A8_DYNAMIC", "W8A8", "W8A16", "W4A16", "W4A8_DYNAMIC"]


@pytest.mark.usefixtures("vllm_ctx")
@pytest.mark.parametrize("scheme", CT_TYPES)
def test_compressed_tensors(llama, tmp_path, scheme):
    from vllm_ascend.quantization.compressed_tensors_config import (
        AscendCompressedTensorsConfig,
        quant_type_of,
    )

    group = 32 if scheme in ("W4A16", "W4A8_DYNAMIC") else None
    out = quantize(llama, scheme, tmp_path / "ct", fmt="compressed-tensors", progress=False,
                   calib_prompts=4, group_size=group, smooth_alpha=0.0)
    assert not (out / "quant_model_description.json").exists()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and "lm_head" in qc["ignore"]
    config = AscendCompressedTensorsConfig.from_config(qc)
    assert quant_type_of(next(iter(config.config.config_groups.values()))) == scheme
    tensors = load_file(str(out / "model.safetensors"))
    src = source_weights(llama)
    prefix = "model.layers.1.mlp.down_proj"
    part = {k.removeprefix(prefix + "."): v for k, v in tensors.items()
            if k.startswith(prefix + ".")}
    deq = quantize_ct.dequantize(part, scheme)
    w = src[f"{prefix}.weight"].double()
    s = qm.expand(part["weight_scale"], w.shape[1])
    assert bool(((w - deq).abs() <= s / 2 * (1 + 1e-5) + 1e-9).all())
    config.packed_modules_mapping = dict(PACKED)
    inputs = layer_inputs(llama)
    for stem, kind, first in (("model.layers.1.self_attn", "qkv_proj", "q_proj"),
                              ("model.layers.1.mlp", "down_proj", "down_proj")):
        layer = load_layer(kind, stem, config, tensors)
        x = inputs[f"{stem}.{first}"]
        ref = x.double() @ float_weight(src, stem, kind).t()
        tol = FP32_TOL[scheme] if scheme not in ("W4A16", "W4A8_DYNAMIC") else 0.1  # group 32
        assert rel(run(layer, x), ref) < tol, (kind, rel(run(layer, x), ref))


# ----------------------------------------------------------------------- lm_head

@pytest.mark.usefixtures("vllm_ctx")
@pytest.mark.parametrize("tied,head", [(False, "W8A8_DYNAMIC"), (True, "W8A16")])
def test_quantized_lm_head(tmp_path, tied, head):
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    from vllm_ascend.quantization.errors import UnsupportedSchemeError

    src = tiny_llama(tmp_path / "src", tied=tied)
    out = quantize(src, "W8A8_DYNAMIC", tmp_path / "q", progress=False, lm_head=head.lower())
    tensors, desc = read(out)
    source = source_weights(src)
    w = source["model.embed_tokens.weight" if tied else "lm_head.weight"]
    assert tensors["lm_head.weight"].dtype == I8 and tensors["lm_head.weight"].shape == (VOCAB,
                                                                                       HIDDEN)
    assert tensors["lm_head.weight_scale"].shape == (VOCAB, 1)
    assert torch.equal(tensors["model.embed_tokens.weight"], source["model.embed_tokens.weight"])
    assert desc["lm_head.weight"] == desc["lm_head.weight_scale"] == head
    assert desc["model.embed_tokens.weight"] == "FLOAT" and desc["metadata"]["lm_head"] == head
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    # |w - q s| <= s / 2 per row
    deq = tensors["lm_head.weight"].double() * tensors["lm_head.weight_scale"].double()
    assert bool(((deq - w.double()).abs() <= tensors["lm_head.weight_scale"] / 2 + 1e-7).all())

    # vLLM's ParallelLMHead loads it through the plugin's method; logits = x W^T
    config = modelslim_config(out)
    head_layer = ParallelLMHead(VOCAB, HIDDEN, quant_config=config, prefix="lm_head",
                                params_dtype=F32)
    params = dict(head_layer.named_parameters())
    for name, t in tensors.items():
        if name.startswith("lm_head."):
            params[name[len("lm_head."):]].weight_loader(params[name[len("lm_head."):]], t)
    head_layer.quant_method.process_weights_after_loading(head_layer)
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(1))
    logits = head_layer.quant_method.apply(head_layer, x)
    assert logits.shape == (5, VOCAB)
    assert rel(logits, x.double() @ w.double().t()) < 0.03
    xs = quantized_input(head, x, tensors, "lm_head")
    assert rel(logits, xs @ deq.t()) < 1e-5
    # a quantized lm_head cannot be tied to the float embedding, nor can embeddings be int8
    embed = VocabParallelEmbedding(VOCAB, HIDDEN, params_dtype=F32, prefix="model.embed_tokens")
    with pytest.raises(UnsupportedSchemeError, match="tie_word_embeddings: true"):
        head_layer.tie_weights(embed)
    bad = dict(desc, **{"model.embed_tokens.weight": "W8A8_DYNAMIC"})
    from vllm_ascend.quantization.modelslim_config import AscendQuantConfig

    bad_config = AscendQuantConfig(parse_description(bad, str(out)), str(out))
    with pytest.raises(UnsupportedSchemeError, match="quantized input embeddings"):
        VocabParallelEmbedding(VOCAB, HIDDEN, quant_config=bad_config, prefix="model.embed_tokens")
    w4 = AscendQuantConfig(parse_description(dict(desc, **{"lm_head.weight": "W4A16"}), str(out)),
                           str(out))
    with pytest.raises(UnsupportedSchemeError, match="accepted for the lm_head: 'FLOAT', "
                                                     "'W8A8_DYNAMIC', 'W8A16'"):
        ParallelLMHead(VOCAB, HIDDEN, quant_config=w4, prefix="lm_head")


# ----------------------------------------------------------------------- errors

def test_errors(llama, tmp_path, tiny_moe, capsys):
    with pytest.raises(QuantizeError, match="unknown scheme 'W3A3'.*accepted: W8A8, W8A8_DYNAMIC"):
        quantize(llama, "W3A3", tmp_path / "x")
    with pytest.raises(QuantizeError, match="accepted: W8A8, W8A8_DYNAMIC, W8A16, W4A16, W4A8_D"):
        quantize(llama, "W4A4_FLATQUANT_DYNAMIC", tmp_path / "x", fmt="compressed-tensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizeError, match="has no config.json"):
        quantize(tmp_path / "empty", "W8A8_DYNAMIC", tmp_path / "x")
    with pytest.raises(QuantizeError, match="is not a directory"):
        quantize(tmp_path / "missing", "W8A8_DYNAMIC", tmp_path / "x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(QuantizeError, match="not empty; pass --force"):
        quantize(llama, "W8A8_DYNAMIC", busy)
    with pytest.raises(QuantizeError, match="refusing to replace"):
        quantize(llama, "W8A8_DYNAMIC", busy, force=True)
    assert (busy / "notes.txt").read_text() == "keep me"
    with pytest.raises(QuantizeError, match="is the source model directory"):
        quantize(llama, "W8A8_DYNAMIC", llama, force=True)
    with pytest.raises(QuantizeError, match="--group-size 48 does not divide the input size"):
        quantize(llama, "W4A8_DYNAMIC", tmp_path / "x", group_size=48)
    with pytest.raises(QuantizeError, match="no per-expert weights"):
        quantize(llama, "W8A8_DYNAMIC", tmp_path / "x", moe_scheme="W4A8_DYNAMIC")
    with pytest.raises(QuantizeError, match="W8A16 has no MoE expert scheme; pass --moe-scheme"):
        quantize(tiny_moe["qwen3_moe"], "W8A16", tmp_path / "x")
    with pytest.raises(QuantizeError, match="MoE experts are not supported"):
        quantize(tiny_moe["qwen3_moe"], "W8A8_DYNAMIC", tmp_path / "x", fmt="compressed-tensors")
    with pytest.raises(QuantizeError, match="applies to W8A8 / W8A8_DYNAMIC layers only"):
        quantize(llama, "W8A16", tmp_path / "x", smooth_alpha=0.5)
    with pytest.raises(QuantizeError, match="must be in"):
        quantize(llama, "W8A8", tmp_path / "x", smooth_alpha=1.5)
    with pytest.raises(QuantizeError, match="unknown --lm-head 'W4A8'; accepted: FLOAT, W8A8_DY"):
        quantize(llama, "W8A8", tmp_path / "x", lm_head="W4A8")
    with pytest.raises(QuantizeError, match="--format modelslim only"):
        quantize(llama, "W8A8", tmp_path / "x", fmt="compressed-tensors", lm_head="W8A16")
    with pytest.raises(QuantizeError, match="--calib-prompts must be >= 1"):
        quantize(llama, "W8A8", tmp_path / "x", calib_prompts=0)
    assert not (tmp_path / "x").exists()
    # the CLI: exit status 2 and the message on stderr; success prints the directory
    assert main(["--model", str(llama), "--scheme", "nope", "--out", str(tmp_path / "y")]) == 2
    assert "unknown scheme 'nope'" in capsys.readouterr().err
    assert main(["--model", str(llama), "--scheme", "w8a8_dynamic", "--out", str(busy),
                 "--no-progress"]) == 2
    out = tmp_path / "cli"
    assert main(["--model", str(llama), "--scheme", "w8a8_dynamic", "--out", str(out),
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    # --force replaces an earlier checkpoint
    assert main(["--model", str(llama), "--scheme", "W8A16", "--out", str(out), "--force",
                 "--no-progress"]) == 0
    assert read(out)[1]["model_quant_type"] == "W8A16"


def test_failure_leaves_nothing(llama, tmp_path, monkeypatch):
    from vllm_ascend.tools import quantize_write

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(quantize_write, "write_tensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize(llama, "W8A8_DYNAMIC", tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []
