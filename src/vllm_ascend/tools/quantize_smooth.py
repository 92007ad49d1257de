"""SmoothQuant-style activation smoothing (ModelSlim's "anti-outlier") for int8 activations.

LLM activations have a few channels with huge values (hundreds, where the rest are ~1); a
per-tensor (static W8A8) or per-token (W8A8_DYNAMIC) int8 scale set by them crushes every
other channel. Smoothing divides input channel ``j`` of a linear layer by
``s_j = max|X_j|^a / max|W_j|^(1-a)`` (``a`` = ``--smooth-alpha``; the maxima over the
calibration prompts and over the layer's output rows) and multiplies the weight's column
``j`` by ``s_j``: ``y = (x / s) (W s)^T`` is the same function. The division is folded into
the tensor that produces ``x``, so nothing is added at run time (Llama-style decoder layers):

===========================  =======================================  =====================
input of                     ``/ s`` folded into                      shared by
===========================  =======================================  =====================
q_proj, k_proj, v_proj       input_layernorm.weight (elementwise)     the three shards
gate_proj, up_proj           post_attention_layernorm.weight          the two shards
o_proj                       v_proj rows (and bias): with GQA one     the query heads of a
                             ``s`` per (kv head, dim), the max over   kv head
                             the query heads sharing it
down_proj                    up_proj rows (and bias):                 -
                             ``silu(g) * (u / s) = (silu(g) * u) / s``
===========================  =======================================  =====================

A group is smoothed only when all its consumers quantize activations (W8A8 / W8A8_DYNAMIC)
and the names and sizes match; other layers (MoE experts, MLA attention) are left alone.
The smoothed input range of a layer follows from the per-channel calibration range:
``min_j (min X_j / s_j)`` .. ``max_j (max X_j / s_j)`` (``s > 0``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

ACT_QUANT = ("W8A8", "W8A8_DYNAMIC")
_Q = re.compile(r"^(?P<layer>.*\.layers\.\d+)\.self_attn\.q_proj\.weight$")


@dataclass
class Smoothing:
    """Per-tensor multipliers: ``col`` (weight columns), ``row`` (weight rows and the bias),
    ``elem`` (norm weights, elementwise); ``act``: layer prefix -> input divisor ``s``."""

    alpha: float
    col: dict[str, torch.Tensor] = field(default_factory=dict)
    row: dict[str, torch.Tensor] = field(default_factory=dict)
    elem: dict[str, torch.Tensor] = field(default_factory=dict)
    act: dict[str, torch.Tensor] = field(default_factory=dict)
    groups: int = 0

    def apply(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The smoothed version of source tensor ``name`` (unchanged if not involved)."""
        prefix, _, leaf = name.rpartition(".")
        out = t
        if name in self.elem:
            out = (out.double() * self.elem[name]).to(t.dtype)
        if leaf in ("weight", "bias") and f"{prefix}.weight" in self.row:
            r = self.row[f"{prefix}.weight"]
            out = (out.double() * (r[:, None] if leaf == "weight" else r)).to(t.dtype)
        if leaf == "weight" and name in self.col:
            out = (out.double() * self.col[name][None, :]).to(t.dtype)
        return out

    def input_range(self, prefix: str, lo: torch.Tensor, hi: torch.Tensor) -> tuple[float, float]:
        """Per-tensor (min, max) of the layer's smoothed input from per-channel min / max."""
        s = self.act.get(prefix)
        if s is None:
            return float(lo.min()), float(hi.max())
        return float((lo.double() / s).min()), float((hi.double() / s).max())


def _factor(xmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    wmax = torch.stack([w.double().abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = xmax.double().clamp_min(1e-5) ** alpha / wmax.clamp_min(1e-5) ** (1 - alpha)
    return s.clamp_min(1e-5)


def plan_smoothing(source, types: dict[str, str], stats: dict[str, tuple[torch.Tensor, ...]],
                   config, alpha: float) -> Smoothing:
    """The multipliers for every smoothable group (module docstring). ``types``: layer
    prefix -> quant type; ``stats``: layer prefix -> (per-channel min, max) of its input."""
    sm = Smoothing(alpha)
    shapes = source.shapes

    def absmax(prefix):
        lo, hi = stats[prefix]
        return torch.maximum(lo.abs(), hi.abs())

    def ok(*prefixes):
        return all(types.get(p) in ACT_QUANT and p in stats and f"{p}.weight" in shapes
                   for p in prefixes)

    def weight(prefix):
        return source.get(f"{prefix}.weight").double()

    for name in shapes:
        m = _Q.match(name)
        if not m:
            continue
        layer = m["layer"]
        attn, mlp = f"{layer}.self_attn", f"{layer}.mlp"
        q, k, v, o = (f"{attn}.{p}_proj" for p in "qkvo")
        gate, up, down = f"{mlp}.gate_proj", f"{mlp}.up_proj", f"{mlp}.down_proj"
        for norm, consumers in ((f"{layer}.input_layernorm.weight", (q, k, v)),
                                (f"{layer}.post_attention_layernorm.weight", (gate, up))):
            if norm in shapes and ok(*consumers):
                s = _factor(absmax(consumers[0]), [weight(c) for c in consumers], alpha)
                sm.elem[norm] = 1 / s
                for c in consumers:
                    sm.col[f"{c}.weight"] = s
                    sm.act[c] = s
                sm.groups += 1
        heads = getattr(config, "num_attention_heads", 0)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or (
            getattr(config, "hidden_size", 0) // max(heads, 1))
        if ok(o) and f"{v}.weight" in shapes and heads and heads % kv_heads == 0 \
                and shapes[f"{o}.weight"][1] == heads * head_dim \
                and shapes[f"{v}.weight"][0] == kv_heads * head_dim:
            per = heads // kv_heads
            s = _factor(absmax(o), [weight(o)], alpha).reshape(kv_heads, per, head_dim).amax(1)
            s_full = s.repeat_interleave(per, dim=0).reshape(-1)
            _mul(sm.row, f"{v}.weight", 1 / s.reshape(-1))
            sm.col[f"{o}.weight"] = s_full
            sm.act[o] = s_full
            sm.groups += 1
        if ok(down) and f"{up}.weight" in shapes \
                and shapes[f"{up}.weight"][0] == shapes[f"{down}.weight"][1]:
            s = _factor(absmax(down), [weight(down)], alpha)
            _mul(sm.row, f"{up}.weight", 1 / s)
            sm.col[f"{down}.weight"] = s
            sm.act[down] = s
            sm.groups += 1
    return sm


def _mul(table: dict[str, torch.Tensor], key: str, factor: torch.Tensor) -> None:
    table[key] = table[key] * factor if key in table else factor


class SmoothedSource:
    """A source whose tensors come out smoothed (same interface: shapes, names, get)."""

    def __init__(self, source, smoothing: Smoothing) -> None:
        self.source, self.smoothing = source, smoothing
        self.shapes = source.shapes

    def names(self) -> list[str]:
        return self.source.names()

    def get(self, name: str) -> torch.Tensor:
        return self.smoothing.apply(name, self.source.get(name))
