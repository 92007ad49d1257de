"""The quantizer's tensor pass: every source tensor -> the output tensors (+ description).

Runs once over the source checkpoint's tensors in file order (progress bar over tensors).
A planned layer's ``<prefix>.weight`` becomes its scheme's tensors ``<prefix>.<suffix>``
(:mod:`quantize_math` for ModelSlim, :mod:`quantize_ct` for compressed-tensors); every other
tensor is copied unchanged in its own dtype. The returned entries (tensor name -> type,
``"FLOAT"`` for copied tensors; a quantized layer's bias carries the layer's type) are the
per-tensor part of ``quant_model_description.json``. A planned lm_head (``--lm-head``) is
written last, as ``lm_head.<suffix>``, from its source tensor (the input embedding when tied,
which is then also copied float).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_ascend.tools import quantize_math as qm
from vllm_ascend.tools.quantize_plan import LM_HEAD, Plan, is_down, is_row_parallel

FLOAT = "FLOAT"
PRODUCER = "vllm_ascend.tools.quantize"
MAX_SHARD_BYTES = 4 << 30


@dataclass
class Options:
    fmt: str = "modelslim"
    group: int = 0
    packed: bool = True
    calib: dict[str, tuple[float, float]] = field(default_factory=dict)
    symmetric_act: bool = False
    transform: str = "random"
    seed: int = 0
    progress: bool = True
    clip_ratio: float = 1.0
    smooth_alpha: float = 0.0
    smooth_groups: int = 0
    calib_source: str = "built-in prompts"


def layer_tensors(source, plan: Plan, prefix: str, quant_type: str, opt: Options,
                  transforms: dict[int, Any]) -> dict[str, Any]:
    """``{suffix: tensor}`` of the planned layer ``prefix``."""
    w = source.get(f"{prefix}.weight").float()
    if opt.fmt != "modelslim":
        from vllm_ascend.tools import quantize_ct

        return quantize_ct.layer_tensors(w, quant_type, opt.group, opt.calib.get(prefix),
                                         opt.symmetric_act)
    if prefix in plan.experts:
        return qm.quantize_expert(w, quant_type, group=opt.group, packed=opt.packed,
                                  down=is_down(prefix))
    trans = None
    if quant_type == "W4A4_FLATQUANT_DYNAMIC":
        k = w.shape[1]
        if k not in transforms:
            transforms[k] = qm.flatquant_transforms(k, opt.transform, opt.seed)
        trans = transforms[k]
    bias_name = f"{prefix}.bias"
    bias = source.get(bias_name).float() if bias_name in source.shapes else None
    return qm.quantize_linear(w, quant_type, group=opt.group, packed=opt.packed,
                              row_parallel=is_row_parallel(prefix),
                              calib=opt.calib.get(prefix), transforms=trans, bias=bias)


def write_tensors(source, plan: Plan, opt: Options, writer) -> dict[str, str]:
    """Quantize / copy every source tensor into ``writer``; return the description entries."""
    from tqdm import tqdm

    entries: dict[str, str] = {}
    transforms: dict[int, Any] = {}
    for name in tqdm(source.names(), desc="quantizing", unit="tensor", file=sys.stderr,
                     disable=not opt.progress):
        prefix, _, leaf = name.rpartition(".")
        quant_type = plan.type_of(prefix)
        if leaf == "weight" and quant_type not in (None, FLOAT):
            for suffix, t in layer_tensors(source, plan, prefix, quant_type, opt,
                                           transforms).items():
                writer.add(f"{prefix}.{suffix}", t)
                entries[f"{prefix}.{suffix}"] = quant_type
            continue
        if plan.lm_head and not plan.lm_head.tied and name == plan.lm_head.source:
            continue  # written quantized below
        writer.add(name, source.get(name))
        entries[name] = quant_type if (leaf == "bias" and quant_type) else FLOAT
    if plan.lm_head:
        head = plan.lm_head
        for suffix, t in qm.quantize_linear(source.get(head.source).float(), head.quant_type,
                                            group=opt.group).items():
            writer.add(f"{LM_HEAD}.{suffix}", t)
            entries[f"{LM_HEAD}.{suffix}"] = head.quant_type
    return entries


def description(plan: Plan, entries: dict[str, str], opt: Options, w4a8_format: str,
                calib_prompts: int, model: Path) -> dict[str, Any]:
    """The whole ``quant_model_description.json`` object (globals first)."""
    types = plan.types()
    version = ("1.0.0" if opt.packed else "0") if "W4A8_DYNAMIC" in types else "1.0.0"
    metadata: dict[str, Any] = {
        "producer": PRODUCER, "source": model.name,
        "linear_scheme": plan.dense_scheme, "moe_scheme": plan.moe_scheme,
        "float_linear": sorted(plan.float_linear),
        "lm_head": plan.lm_head.quant_type if plan.lm_head else FLOAT,
    }
    if "W8A8" in types:
        metadata["calibration"] = {
            "prompts": calib_prompts, "source": opt.calib_source,
            "activations": "symmetric" if opt.symmetric_act else "asymmetric",
            "statistic": "min/max of each layer's input over all prompt tokens"}
    if opt.smooth_alpha:
        metadata["smoothing"] = {"method": "SmoothQuant (folded into norms / v_proj / up_proj)",
                                 "alpha": opt.smooth_alpha, "groups": opt.smooth_groups}
    if "W4A4_FLATQUANT_DYNAMIC" in types:
        metadata["flatquant"] = {"transform": opt.transform, "seed": opt.seed,
                                 "clip_ratio": opt.clip_ratio}
    if "W4A8_DYNAMIC" in types:
        metadata["w4a8_format"] = w4a8_format
    out: dict[str, Any] = {"model_quant_type": plan.scheme, "version": version,
                           "group_size": opt.group, "metadata": metadata}
    out.update(entries)
    return out


class ShardWriter:
    """Collects tensors into safetensors files of at most MAX_SHARD_BYTES (one
    ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + index)."""

    def __init__(self, out: Path, max_bytes: int = MAX_SHARD_BYTES) -> None:
        self.out, self.max_bytes = out, max_bytes
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.seen: set[str] = set()
        self.total = 0

    def add(self, name: str, tensor) -> None:
        if name in self.seen:
            raise ValueError(f"tensor {name!r} written twice")
        self.seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        path = self.out / f"part-{len(self.parts):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.parts.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        self.flush()
        if len(self.parts) == 1:
            self.parts[0][0].rename(self.out / "model.safetensors")
            return ["model.safetensors"]
        n, weight_map, files = len(self.parts), {}, []
        for i, (path, names) in enumerate(self.parts):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.out / final)
            files.append(final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return files
