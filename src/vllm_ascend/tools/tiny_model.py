"""Write a tiny random-weight Hugging Face checkpoint that vLLM loads and serves on CPU.

    python -m vllm_ascend.tools.tiny_model --arch {qwen3,qwen3_moe,deepseek_v3} --out DIR
        [--seed 0] [--dtype float32] [--layers N] [--force] [--hot-experts N --router-bias B]

prints the checkpoint directory on stdout (and nothing else; progress goes to stderr).

The architectures mirror the real models' structure at toy size:

- ``qwen3``: Qwen3ForCausalLM, dense, GQA, q/k RMSNorm, tied embeddings;
- ``qwen3_moe``: Qwen3MoeForCausalLM, 16 experts, top-4, normalised top-k, every layer MoE;
- ``deepseek_v3``: DeepseekV3ForCausalLM, MLA (kv_lora_rank 512 + qk_rope_head_dim 64 = the 576
  latent head size that vLLM's CPU MLA decode kernel supports, q_lora_rank set), layer 0
  dense, later layers MoE with 64 routed experts in 8 groups, top-8 from 4 groups
  (``noaux_tc``, sigmoid scores, ``e_score_correction_bias``), one shared expert.

The tokenizer is SmolLM2's (vocab 49152), copied from the default checkpoint of
``vllm_ascend.tools.prepare_model``, so prompts are real text. The weights are drawn here, not
by transformers' initialisers: each tensor from its own generator seeded by (seed, name), so
the same seed gives a byte-identical ``model.safetensors``. Linear weights and embeddings are
N(0, 0.02), norms are 1, the router's ``e_score_correction_bias`` is N(0, 0.02) in float32.
The safetensors file is written here too (canonical header), since ``save_file`` orders its
header differently from one call to the next. The checkpoint is written to a temporary
directory and renamed: never half-written. ``--force`` replaces only a checkpoint directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ARCHS = ("qwen3", "qwen3_moe", "deepseek_v3")
ARCHITECTURES = {
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_LAYERS = 2
INIT_STD = 0.02

# SmolLM2's tokenizer: vocabulary size and special token ids (<|endoftext|>, <|im_start|>,
# <|im_end|>), as in the prepared default checkpoint's config.json.
VOCAB_SIZE = 49152
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)

# Per-architecture toy sizes (the number of layers comes from --layers).
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "initializer_range": INIT_STD,
    "attention_bias": False,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": EOS_ID,
    "use_cache": True,
}
SIZES: dict[str, dict[str, Any]] = {
    "qwen3": {
        "num_key_value_heads": 2,
        "head_dim": 64,  # != hidden_size / heads, as in the real Qwen3 models
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "tie_word_embeddings": True,
    },
    "qwen3_moe": {
        "num_key_value_heads": 2,
        "head_dim": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "tie_word_embeddings": False,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 64,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "deepseek_v3": {
        "num_key_value_heads": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": False,
        # MLA. vLLM's CPU MLA backends only take a 576-wide latent head: 512 + 64.
        "q_lora_rank": 64,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
        "head_dim": 64,  # = qk_rope_head_dim, as transformers' DeepseekV3Config has it
        # MoE.
        "n_routed_experts": 64,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 64,
        "n_group": 8,
        "topk_group": 4,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "num_nextn_predict_layers": 0,  # no MTP layer
    },
}


def _config_class(arch: str):
    import transformers

    name = {"qwen3": "Qwen3Config", "qwen3_moe": "Qwen3MoeConfig"}.get(arch, "DeepseekV3Config")
    return getattr(transformers, name)


def build_config(arch: str, layers: int | None = None, dtype: str = "float32"):
    """The transformers config object of the tiny ``arch`` model."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    layers = DEFAULT_LAYERS if layers is None else layers
    if layers < 1:
        raise ValueError(f"--layers must be >= 1, got {layers}")
    kwargs = {**COMMON, **SIZES[arch], "num_hidden_layers": layers}
    if arch == "deepseek_v3" and layers <= kwargs["first_k_dense_replace"]:
        raise ValueError(
            f"deepseek_v3 needs --layers >= {kwargs['first_k_dense_replace'] + 1}: the first "
            f"{kwargs['first_k_dense_replace']} layer(s) are dense, the MoE layers come after"
        )
    return _config_class(arch)(architectures=[ARCHITECTURES[arch]], dtype=dtype, **kwargs)


def _is_moe_layer(arch: str, config, i: int) -> bool:
    if arch == "qwen3_moe":
        step = config.decoder_sparse_step
        return i not in config.mlp_only_layers and step > 0 and (i + 1) % step == 0
    if arch == "deepseek_v3":
        return i >= config.first_k_dense_replace and i % config.moe_layer_freq == 0
    return False


def _mlp(prefix: str, hidden: int, inter: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.gate_proj.weight": (inter, hidden),
        f"{prefix}.up_proj.weight": (inter, hidden),
        f"{prefix}.down_proj.weight": (hidden, inter),
    }


def weight_shapes(arch: str, config) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor names -> shapes, named as in the real Hugging Face checkpoints
    (per-expert ``mlp.experts.{e}.*_proj``), which is what vLLM's loaders map from."""
    h = config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (h,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        a = f"{p}.self_attn"
        heads = config.num_attention_heads
        if arch == "deepseek_v3":
            qk_head = config.qk_nope_head_dim + config.qk_rope_head_dim
            if config.q_lora_rank is None:
                shapes[f"{a}.q_proj.weight"] = (heads * qk_head, h)
            else:
                shapes[f"{a}.q_a_proj.weight"] = (config.q_lora_rank, h)
                shapes[f"{a}.q_a_layernorm.weight"] = (config.q_lora_rank,)
                shapes[f"{a}.q_b_proj.weight"] = (heads * qk_head, config.q_lora_rank)
            shapes[f"{a}.kv_a_proj_with_mqa.weight"] = (
                config.kv_lora_rank + config.qk_rope_head_dim,
                h,
            )
            shapes[f"{a}.kv_a_layernorm.weight"] = (config.kv_lora_rank,)
            shapes[f"{a}.kv_b_proj.weight"] = (
                heads * (config.qk_nope_head_dim + config.v_head_dim),
                config.kv_lora_rank,
            )
            shapes[f"{a}.o_proj.weight"] = (h, heads * config.v_head_dim)
        else:
            d, kv = config.head_dim, config.num_key_value_heads
            shapes[f"{a}.q_proj.weight"] = (heads * d, h)
            shapes[f"{a}.k_proj.weight"] = (kv * d, h)
            shapes[f"{a}.v_proj.weight"] = (kv * d, h)
            shapes[f"{a}.o_proj.weight"] = (h, heads * d)
            shapes[f"{a}.q_norm.weight"] = (d,)
            shapes[f"{a}.k_norm.weight"] = (d,)
        m = f"{p}.mlp"
        if not _is_moe_layer(arch, config, i):
            shapes.update(_mlp(m, h, config.intermediate_size))
            continue
        n_experts = config.num_experts if arch == "qwen3_moe" else config.n_routed_experts
        shapes[f"{m}.gate.weight"] = (n_experts, h)
        for e in range(n_experts):
            shapes.update(_mlp(f"{m}.experts.{e}", h, config.moe_intermediate_size))
        if arch == "deepseek_v3":
            if config.topk_method == "noaux_tc":
                shapes[f"{m}.gate.e_score_correction_bias"] = (n_experts,)
            if config.n_shared_experts:
                inter = config.moe_intermediate_size * config.n_shared_experts
                shapes.update(_mlp(f"{m}.shared_experts", h, inter))
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


def _tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def init_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: str = "float32"):
    """One tensor, a function of (seed, name, shape) only: norms 1, everything else
    N(0, 0.02); the router bias stays float32 (as in the DeepSeek-V3 checkpoint)."""
    import torch

    if name.endswith("norm.weight"):
        t = torch.ones(shape, dtype=torch.float32)
    else:
        g = torch.Generator().manual_seed(_tensor_seed(seed, name))
        t = torch.empty(shape, dtype=torch.float32).normal_(0.0, INIT_STD, generator=g)
    if name.endswith("e_score_correction_bias"):
        return t
    return t.to(getattr(torch, dtype))


def build_weights(arch: str, config, seed: int = 0, dtype: str = "float32",
                  hot_experts: int = 0, router_bias: float = 0.0) -> dict:
    tensors = {n: init_tensor(n, s, seed, dtype) for n, s in weight_shapes(arch, config).items()}
    if hot_experts:
        bias_router(arch, config, tensors, hot_experts, router_bias, seed)
    return tensors


def bias_router(arch: str, config, tensors: dict, hot: int, bias: float, seed: int) -> None:
    """Make experts ``0 .. hot-1`` of every MoE layer hot (all on EP rank 0 with the linear
    placement), so that expert placement matters (EPLB tests and benches).

    DeepSeek-V3: ``bias`` is added to their ``e_score_correction_bias`` (selection only,
    as in the real model). Qwen3-MoE has no router bias: every embedding row gets a shared
    component ``u`` of its own size and the hot experts' gate rows ``bias * sqrt(2/H) * u``,
    which after the norm raises their logits by about ``bias`` for every token.
    """
    import torch

    n_experts = getattr(config, "n_routed_experts", None) or config.num_experts
    if not 0 < hot < n_experts or not bias > 0:
        raise ValueError(f"hot_experts must be in 1..{n_experts - 1} and router_bias > 0, "
                         f"got {hot} and {bias}")
    gates = [n for n in tensors if n.endswith("mlp.gate.weight")]
    if arch == "deepseek_v3":
        for n in gates:
            tensors[n.replace("gate.weight", "gate.e_score_correction_bias")][:hot] += bias
        return
    h = config.hidden_size
    g = torch.Generator().manual_seed(_tensor_seed(seed, "router-bias"))
    u = torch.randn(h, generator=g)
    u = u / u.norm()
    emb = tensors["model.embed_tokens.weight"]
    emb += (emb.float().norm(dim=1, keepdim=True) * u).to(emb.dtype)
    for n in gates:
        # after the norm a token has about sqrt(H/2) along u: the logits rise by ~bias
        tensors[n][:hot] += (bias * (2 / h) ** 0.5 * u).to(tensors[n].dtype)


_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def write_safetensors(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    """A byte-reproducible safetensors file.

    ``safetensors.torch.save_file`` orders its JSON header by a randomly seeded hash map, so
    the same tensors give different bytes. Here the header is canonical JSON (sorted keys)
    and the data is laid out by (itemsize descending, name): each tensor stays aligned.
    """
    import torch

    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in order:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _ST_DTYPES[str(t.dtype).removeprefix("torch.")],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned
    if sys.byteorder != "little":
        raise RuntimeError("safetensors data is little-endian; this host is not")
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in order:
            f.write(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().data)


def default_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer: the default checkpoint of prepare_model (converted once if needed)."""
    from vllm_ascend.tools.prepare_model import prepare

    return prepare()


def _check_out(out: Path, force: bool) -> None:
    """An absent or empty ``out`` is fine; a non-empty one only with ``force``, and only if it
    looks like a checkpoint (has config.json): --force never deletes an arbitrary directory."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise SystemExit(f"--out {out} exists and is not empty; pass --force to replace it")
    if not (out / "config.json").is_file():
        raise SystemExit(
            f"--out {out} is not empty and has no config.json; refusing to replace it "
            "even with --force (not a checkpoint directory)"
        )


def generate(
    arch: str,
    out: Path,
    seed: int = 0,
    dtype: str = "float32",
    layers: int | None = None,
    force: bool = False,
    tokenizer_dir: Path | None = None,
    hot_experts: int = 0,
    router_bias: float = 0.0,
) -> Path:
    """Write the tiny ``arch`` checkpoint into ``out`` (temp dir + rename) and return ``out``."""
    from transformers import GenerationConfig

    out = Path(out)
    _check_out(out, force)
    config = build_config(arch, layers, dtype)
    tok_src = Path(tokenizer_dir) if tokenizer_dir else default_tokenizer_dir()
    if not (tok_src / "tokenizer.json").is_file():
        raise SystemExit(f"no tokenizer.json in {tok_src}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shapes = weight_shapes(arch, config)
        n_params = sum(_numel(s) for s in shapes.values())
        print(
            f"tiny {arch} ({ARCHITECTURES[arch]}): {config.num_hidden_layers} layers, "
            f"{len(shapes)} tensors, {n_params / 1e6:.1f} M params, {dtype}, seed {seed}",
            file=sys.stderr,
        )
        tensors = build_weights(arch, config, seed, dtype, hot_experts, router_bias)
        meta = {
            "format": "pt",
            "generator": "vllm_ascend.tools.tiny_model",
            "arch": arch,
            "seed": str(seed),
            **({"hot_experts": str(hot_experts), "router_bias": str(router_bias)}
               if hot_experts else {}),
        }
        write_safetensors(tensors, tmp / "model.safetensors", meta)
        del tensors
        config.save_pretrained(tmp)
        generation = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
        generation.save_pretrained(tmp)
        for f in TOKENIZER_FILES:
            if (tok_src / f).is_file():
                shutil.copyfile(tok_src / f, tmp / f)
        if out.is_dir():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}", file=sys.stderr)
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def summary(arch: str, config) -> dict[str, Any]:
    """The architecture-defining config fields (what the tests and docs look at)."""
    keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
    keys += {
        "qwen3": ["num_key_value_heads", "head_dim", "intermediate_size", "tie_word_embeddings"],
        "qwen3_moe": [
            "num_key_value_heads",
            "head_dim",
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "norm_topk_prob",
        ],
        "deepseek_v3": [
            "q_lora_rank",
            "kv_lora_rank",
            "qk_rope_head_dim",
            "qk_nope_head_dim",
            "v_head_dim",
            "n_routed_experts",
            "n_shared_experts",
            "num_experts_per_tok",
            "n_group",
            "topk_group",
            "topk_method",
            "scoring_func",
            "first_k_dense_replace",
            "routed_scaling_factor",
        ],
    }[arch]
    return {k: getattr(config, k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=ARCHS, help="model architecture")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint dir to write")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weight dtype")
    parser.add_argument(
        "--layers", type=int, default=None, help=f"decoder layers (default {DEFAULT_LAYERS})"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="dir with tokenizer.json (default: the prepare_model SmolLM2 checkpoint)",
    )
    parser.add_argument("--hot-experts", type=int, default=0,
                        help="MoE: make experts 0..N-1 hot (with --router-bias)")
    parser.add_argument("--router-bias", type=float, default=2.0,
                        help="logit boost of the hot experts (default 2.0)")
    args = parser.parse_args(argv)
    try:
        config = build_config(args.arch, args.layers, args.dtype)  # bad arguments: no work
        if args.hot_experts:
            if args.arch == "qwen3":
                raise ValueError("--hot-experts needs an MoE architecture (qwen3_moe, "
                                 "deepseek_v3)")
            n = getattr(config, "n_routed_experts", None) or config.num_experts
            if not 0 < args.hot_experts < n or not args.router_bias > 0:
                raise ValueError(f"--hot-experts must be in 1..{n - 1} and --router-bias > 0")
    except ValueError as e:
        parser.error(str(e))
    out = generate(
        args.arch, args.out, args.seed, args.dtype, args.layers, args.force, args.tokenizer,
        args.hot_experts if args.hot_experts else 0, args.router_bias if args.hot_experts else 0.0,
    )
    print(json.dumps(summary(args.arch, config)), file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
