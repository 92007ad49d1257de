"""Which checkpoint tensors the quantizer quantizes, with which scheme and group size.

The plan is made from the *checkpoint's own tensor names* (what vLLM's loaders map from) and
the module structure transformers builds for the config (which modules are ``nn.Linear``):

- **linear**: ``<prefix>.weight`` (2-D) of an ``nn.Linear`` inside a decoder block
  (``.layers.<i>.``): attention q/k/v/o (MLA: q_a/q_b/kv_a), MLP gate/up/down, shared
  experts. Kept FLOAT: the MoE router (``...mlp.gate``), ``lm_head`` and, in MLA models,
  ``kv_b_proj`` (vLLM's MLA dequantizes it into the attention's absorbed weights at load,
  through an identity-matrix forward that a static or 4-bit activation quantizer would
  distort, and no quantized kernel ever runs it);
- **experts**: per-expert projections ``<moe>.experts.<e>.<proj>.weight`` (2-D) of the
  checkpoint (transformers may fuse them into 3-D parameters in memory; the checkpoint
  names are what vLLM's expert loader reads);
- everything else (embeddings, norms, router, biases of unquantized layers, ...) is copied
  unchanged and marked FLOAT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: ModelSlim (``--format modelslim``) schemes the quantizer writes.
MODELSLIM_SCHEMES = ("W8A8", "W8A8_DYNAMIC", "W8A16", "W4A16", "W4A8_DYNAMIC",
                     "W4A4_FLATQUANT_DYNAMIC")
#: compressed-tensors (``--format compressed-tensors``) schemes.
CT_SCHEMES = ("W8A8", "W8A8_DYNAMIC", "W8A16", "W4A16", "W4A8_DYNAMIC")
#: Spellings accepted for a scheme.
ALIASES = {"W4A8": "W4A8_DYNAMIC", "W8A8_STATIC": "W8A8",
           "W4A4_FLATQUANT": "W4A4_FLATQUANT_DYNAMIC"}
#: Expert schemes (the registered ``moe`` schemes) and FLOAT.
MOE_SCHEMES = ("W8A8_DYNAMIC", "W4A8_DYNAMIC", "FLOAT")
#: ``--moe-scheme`` default per ``--scheme``; W8A8 (static) experts have no scheme: the
#: experts of a W8A8 model run W8A8_DYNAMIC, as ModelSlim's W8A8 MoE checkpoints do.
DEFAULT_MOE = {"W8A8_DYNAMIC": "W8A8_DYNAMIC", "W8A8": "W8A8_DYNAMIC",
               "W4A8_DYNAMIC": "W4A8_DYNAMIC"}
#: ``--scheme W4A8_DYNAMIC`` on an MoE model: int4 experts, the other linear layers
#: W8A8_DYNAMIC (ModelSlim's DeepSeek W4A8 layout).
MOE_MODEL_DENSE = {"W4A8_DYNAMIC": "W8A8_DYNAMIC"}
#: Schemes whose weights are grouped along K (``group_size``), with their default G.
GROUPED_DEFAULT = {"W4A8_DYNAMIC": 256}
GROUPED_DEFAULT_CT = {"W4A8_DYNAMIC": 128, "W4A16": 128}
#: Layers vLLM builds as RowParallelLinear (K sharded): W4A8 1.0.0 writes 16 scale_bias columns.
ROW_PARALLEL = ("o_proj", "down_proj", "out_proj", "dense_4h_to_h", "fc2", "wo", "w2")
FLOAT_LINEAR = ("kv_b_proj",)
_LAYER = re.compile(r"(^|\.)layers\.\d+\.")
_EXPERT = re.compile(r"^(?P<moe>.+\.experts)\.(?P<e>\d+)\.(?P<proj>[^.]+)\.weight$")
_DOWN = ("down_proj", "w2")


#: ``--lm-head`` choices (the plugin's ``LM_HEAD_SCHEMES`` and FLOAT).
LM_HEAD_CHOICES = ("FLOAT", "W8A8_DYNAMIC", "W8A16")
#: Checkpoint prefix of the output projection (vLLM's ``ParallelLMHead`` prefix).
LM_HEAD = "lm_head"


class QuantizeError(ValueError):
    """Bad quantizer input: the message says what is wrong and what is accepted."""


def canonical_scheme(scheme: str, fmt: str) -> str:
    """Upper-cased, aliases resolved, checked against the format's schemes."""
    accepted = MODELSLIM_SCHEMES if fmt == "modelslim" else CT_SCHEMES
    name = ALIASES.get(scheme.strip().upper(), scheme.strip().upper())
    if name not in accepted:
        raise QuantizeError(f"unknown scheme {scheme!r} for --format {fmt}; accepted: "
                            + ", ".join(accepted))
    return name


@dataclass(frozen=True)
class LMHead:
    """A quantized output projection: written as ``lm_head.<suffix>`` from the ``source``
    tensor, which is the input embedding when the source ties the two (``tied``; the
    written config then unties them, the embedding staying float)."""

    quant_type: str
    source: str
    tied: bool


@dataclass
class Plan:
    """``linear`` / ``experts``: checkpoint prefix (without ``.weight``) -> quant type."""

    scheme: str
    linear: dict[str, str] = field(default_factory=dict)
    experts: dict[str, str] = field(default_factory=dict)
    float_linear: list[str] = field(default_factory=list)
    dense_scheme: str = ""
    moe_scheme: str | None = None
    group_size: int = 0
    lm_head: LMHead | None = None

    @property
    def is_moe(self) -> bool:
        return bool(self.experts) or self.moe_scheme is not None

    def type_of(self, prefix: str) -> str | None:
        return self.linear.get(prefix) or self.experts.get(prefix)

    def types(self) -> set[str]:
        head = (self.lm_head.quant_type,) if self.lm_head else ()
        return {t for t in (*self.linear.values(), *self.experts.values(), *head)
                if t != "FLOAT"}


def linear_module_names(config) -> list[str]:
    """Names of the ``nn.Linear`` modules of the transformers model for ``config`` (built
    on the meta device: no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def plan_lm_head(quant_type: str, config, shapes: dict[str, tuple[int, ...]],
                 fmt: str) -> LMHead | None:
    """``--lm-head``: None for FLOAT, else where the output projection's weight comes from
    (``lm_head.weight``, or the input embedding of a checkpoint that ties the two)."""
    name = quant_type.strip().upper()
    if name not in LM_HEAD_CHOICES:
        raise QuantizeError(f"unknown --lm-head {quant_type!r}; accepted: "
                            + ", ".join(LM_HEAD_CHOICES))
    if name == "FLOAT":
        return None
    if fmt != "modelslim":
        raise QuantizeError("--lm-head: a quantized lm_head is written in --format modelslim "
                            "only (compressed-tensors checkpoints keep it float)")
    if f"{LM_HEAD}.weight" in shapes:
        return LMHead(name, f"{LM_HEAD}.weight", tied=False)
    if not getattr(config, "tie_word_embeddings", False):
        raise QuantizeError(f"--lm-head {name}: the checkpoint has no '{LM_HEAD}.weight' and "
                            "does not tie it to the input embeddings")
    embedding = input_embedding_name(config, shapes)
    if embedding is None:
        raise QuantizeError(f"--lm-head {name}: the checkpoint ties the lm_head to the input "
                            "embeddings, and their tensor was not found")
    return LMHead(name, embedding, tied=True)


def input_embedding_name(config, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The checkpoint name of the input-embedding weight (transformers' model built on the
    meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embed = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embed and f"{name}.weight" in shapes:
            return f"{name}.weight"
    return None


def is_router(prefix: str) -> bool:
    return prefix.rsplit(".", 1)[-1] in ("gate", "router") and ".mlp." in prefix + "."


def is_row_parallel(prefix: str) -> bool:
    return prefix.rsplit(".", 1)[-1] in ROW_PARALLEL


def make_plan(scheme: str, shapes: dict[str, tuple[int, ...]], linear_names: list[str],
              moe_scheme: str | None, fmt: str) -> Plan:
    """Assign a type to every quantizable layer (see the module docstring)."""
    experts = {m["moe"] + f".{m['e']}.{m['proj']}": m["proj"]
               for name, shape in shapes.items() if (m := _EXPERT.match(name)) and len(shape) == 2}
    fused = [n for n, s in shapes.items() if ".experts." in n and len(s) == 3]
    if fused:
        raise QuantizeError(f"the checkpoint stores fused 3-D expert tensors ({fused[0]}, ...); "
                            "the quantizer needs per-expert '<moe>.experts.<e>.<proj>.weight'")
    plan = Plan(scheme=scheme)
    if experts or moe_scheme is not None:
        if fmt != "modelslim":
            raise QuantizeError("--format compressed-tensors: MoE experts are not supported by "
                                "the plugin's compressed-tensors loader; use --format modelslim")
        if not experts:
            raise QuantizeError("--moe-scheme given, but the checkpoint has no per-expert "
                                "weights ('<moe>.experts.<e>.<proj>.weight')")
        chosen = moe_scheme or DEFAULT_MOE.get(scheme)
        if chosen is None:
            raise QuantizeError(f"{scheme} has no MoE expert scheme; pass --moe-scheme (accepted: "
                                + ", ".join(MOE_SCHEMES) + ")")
        plan.moe_scheme = chosen
        plan.experts = {prefix: chosen for prefix in experts}
        plan.dense_scheme = MOE_MODEL_DENSE.get(scheme, scheme) if moe_scheme is None \
            else scheme
    else:
        plan.dense_scheme = scheme
    for name in linear_names:
        if not _LAYER.search(name) or f"{name}.weight" not in shapes or name in plan.experts:
            continue
        if len(shapes[f"{name}.weight"]) != 2:
            continue
        if is_router(name) or name.rsplit(".", 1)[-1] in FLOAT_LINEAR:
            plan.float_linear.append(name)
            continue
        plan.linear[name] = plan.dense_scheme
    if not plan.linear and not plan.experts:
        raise QuantizeError("found no linear layers inside decoder blocks ('.layers.<i>.') to "
                            "quantize; is this a causal LM checkpoint?")
    return plan


def layer_inputs(plan: Plan, shapes: dict[str, tuple[int, ...]], quant_type: str) -> dict[str, int]:
    """prefix -> input size K of the layers of ``quant_type`` (experts included)."""
    return {p: shapes[f"{p}.weight"][1] for p in (*plan.linear, *plan.experts)
            if plan.type_of(p) == quant_type}


def resolve_group_size(plan: Plan, shapes: dict[str, tuple[int, ...]], requested: int | None,
                       fmt: str) -> int:
    """The description's ``group_size``: the grouped scheme's G (``requested``, else its
    default, else the largest power of two below the default dividing every input size),
    0 when no layer is grouped (or W8A16 / W4A16 per-channel by default in ModelSlim)."""
    defaults = GROUPED_DEFAULT if fmt == "modelslim" else GROUPED_DEFAULT_CT
    grouped = [t for t in plan.types() if t in defaults or t in ("W8A16", "W4A16")]
    if requested is not None and requested < 0:
        raise QuantizeError(f"--group-size must be >= 0 (0 = per-channel), got {requested}")
    if not grouped:
        return 0
    sizes = {}
    for t in grouped:
        sizes.update(layer_inputs(plan, shapes, t))
    if requested is not None:
        bad = {p: k for p, k in sizes.items() if requested and k % requested}
        if bad:
            prefix, k = next(iter(bad.items()))
            raise QuantizeError(f"--group-size {requested} does not divide the input size {k} of "
                                f"'{prefix}' ({len(bad)} layer(s)); accepted: a common divisor "
                                f"of the input sizes {sorted(set(sizes.values()))}, or 0")
        return requested
    default = max((defaults.get(t, 0) for t in grouped), default=0)
    g = default
    while g >= 8 and any(k % g for k in sizes.values()):
        g //= 2
    return g if g >= 8 else 0


def check_shapes(plan: Plan, shapes: dict[str, tuple[int, ...]]) -> None:
    """What the schemes require of the layer sizes, checked before any work."""
    for prefix in (*plan.linear, *plan.experts):
        quant_type = plan.type_of(prefix)
        n, k = shapes[f"{prefix}.weight"]
        if quant_type in ("W4A8_DYNAMIC", "W4A16") and prefix in plan.linear and n % 8:
            raise QuantizeError(f"'{prefix}' has {n} outputs; {quant_type} (int4 packing) needs "
                                "a multiple of 8")
        if quant_type == "W4A8_DYNAMIC" and n % 2:
            raise QuantizeError(f"'{prefix}' has {n} outputs; int4 pairs need an even number")
        if quant_type == "W4A4_FLATQUANT_DYNAMIC" and (k % 8 or k % 4 == 2):
            raise QuantizeError(f"'{prefix}' has input size {k}; W4A4_FLATQUANT_DYNAMIC needs a "
                                "multiple of 8 (int4 packing, K1 x K2 factorisation)")


def is_down(prefix: str) -> bool:
    return prefix.rsplit(".", 1)[-1] in _DOWN
