"""Quantize a Hugging Face causal LM into a checkpoint vLLM loads with vllm-ascend.

    python -m vllm_ascend.tools.quantize --model DIR --scheme SCHEME --out DIR
        [--format modelslim|compressed-tensors] [--calib-prompts N] [--calib-file F]
        [--group-size G] [--w4a8-format new|legacy] [--moe-scheme W8A8_DYNAMIC|W4A8_DYNAMIC|FLOAT]
        [--smooth-alpha A] [--lm-head FLOAT|W8A8_DYNAMIC|W8A16] [--symmetric-activations] [--flatquant-transform random|identity]
        [--seed S] [--no-quantization-config] [--force] [--no-progress]

prints the written directory on stdout (progress bars and notes go to stderr). Runs on any
CPU: no NPU, no vLLM engine. The tensor layouts are docs/quantization.md's.

**What is quantized** (``quantize_plan``): every ``nn.Linear`` inside a decoder block
(attention q/k/v/o, MLP gate/up/down, shared experts) gets ``--scheme``; routed experts
(``<moe>.experts.<e>.<proj>``) get ``--moe-scheme`` (default: W8A8_DYNAMIC for W8A8 /
W8A8_DYNAMIC, W4A8_DYNAMIC for W4A8_DYNAMIC, whose other layers then run W8A8_DYNAMIC: the
DeepSeek W4A8 layout). Embeddings, norms, the MoE router and MLA's kv_b_proj stay float and
are marked ``"FLOAT"`` in ``quant_model_description.json``; so is the lm_head unless
``--lm-head W8A8_DYNAMIC|W8A16`` (ModelSlim format): it is then written as ``lm_head.*`` int8
tensors (per-channel), from the input embedding when the source ties the two, and the
written config says ``"tie_word_embeddings": false`` (the input embedding stays float). The
lm_head is a small model's largest weight, read once per decoded token.

**Schemes** (``--format modelslim``, the default): W8A8 (static activations calibrated on
``--calib-prompts`` prompts through the fp32 model, the built-in ones or ``--calib-file``'s
(one prompt per line, or ``.jsonl`` objects with ``"text"``): per-layer input range ->
``input_scale`` / ``input_offset``, asymmetric unless ``--symmetric-activations``),
W8A8_DYNAMIC (both: ``--smooth-alpha`` SmoothQuant folded into the norms / v_proj /
up_proj, ``quantize_smooth``; default 0.5 for --scheme W8A8 / W8A8_DYNAMIC, off otherwise),
W8A16, W4A16 (per-channel unless ``--group-size``), W4A8_DYNAMIC (group size ``--group-size``, default
256 - or the largest power of two below it dividing every input size; ``--w4a8-format new`` writes the packed 1.0.0 layout with ``scale_bias``, ``legacy``
one int4 per byte), W4A4_FLATQUANT_DYNAMIC (Kronecker factors ``P1``, ``P2`` per input size:
seeded random orthogonal matrices by default, identity with ``--flatquant-transform
identity``; the weight is quantized in the transformed basis ``P1^T W_n P2``; clip ratio 1.0,
i.e. no activation clipping: these are not FlatQuant's *learned* transforms, just a valid,
outlier-spreading choice). ``--format compressed-tensors``: W8A8, W8A8_DYNAMIC, W8A16,
W4A16, W4A8_DYNAMIC (``quantize_ct``; dense models only).

**Output**: ``model.safetensors`` (sharded with an index above 4 GiB), config.json (the
source's, plus ``quantization_config: {"quant_method": "ascend"}`` for ModelSlim unless
``--no-quantization-config``: the platform does not call the description auto-detection yet;
the compressed-tensors config for that format), ``quant_model_description.json``
(ModelSlim), and the source's tokenizer / generation_config files. Written to a temporary
directory beside ``--out`` and renamed: never half-written. A non-empty ``--out`` needs
``--force`` (and must itself be a checkpoint directory).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vllm_ascend.tools.quantize_plan import (
    CT_SCHEMES,
    LM_HEAD_CHOICES,
    MODELSLIM_SCHEMES,
    MOE_SCHEMES,
    Plan,
    QuantizeError,
    canonical_scheme,
    check_shapes,
    make_plan,
    plan_lm_head,
    resolve_group_size,
)

FORMATS = ("modelslim", "compressed-tensors")
W4A8_FORMATS = {"new": "1.0.0", "legacy": "0"}
DEFAULT_CALIB_PROMPTS = 16
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json", ".msgpack",
                 ".h5")
_SKIP_FILES = ("config.json", "quant_model_description.json")
_HEURISTIC_LINEAR = ("proj", "fc1", "fc2", "dense", "wo", "wi", "w1", "w2", "w3",
                     "query_key_value")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the source

class Source:
    """The source checkpoint's tensors by name: safetensors files read lazily, or (no
    safetensors) the state dict of the transformers model."""

    def __init__(self, model_dir: Path, state_dict: dict | None = None) -> None:
        from safetensors import safe_open

        self.state_dict = state_dict
        self.where: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        if state_dict is not None:
            self.shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
            return
        for path in sorted(glob.glob(str(model_dir / "*.safetensors"))):
            handle = safe_open(path, framework="pt")
            for name in handle.keys():
                self.where[name] = handle
                self.shapes[name] = tuple(handle.get_slice(name).get_shape())

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str):
        if self.state_dict is not None:
            return self.state_dict[name].detach()
        return self.where[name].get_tensor(name)


def has_safetensors(model_dir: Path) -> bool:
    return bool(glob.glob(str(model_dir / "*.safetensors")))


def load_model(model_dir: Path):
    """The transformers model in float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    _log(f"loading {model_dir} with transformers (float32, CPU)")
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def linear_names(config, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """``nn.Linear`` module names (transformers, meta device); by name when the model
    class cannot be built (2-D weights whose last name part looks like a projection)."""
    from vllm_ascend.tools.quantize_plan import linear_module_names

    try:
        return linear_module_names(config)
    except Exception as exc:  # noqa: BLE001 - unknown / remote-code architectures
        _log(f"note: cannot build the transformers model class ({type(exc).__name__}: {exc}); "
             "finding linear layers by name")
    out = []
    for name, shape in shapes.items():
        prefix, _, leaf = name.rpartition(".")
        last = prefix.rpartition(".")[2]
        if leaf == "weight" and len(shape) == 2 and last.endswith(_HEURISTIC_LINEAR):
            out.append(prefix)
    return out


# ------------------------------------------------------------------------------ checks

def check_inputs(model: Path, out: Path, force: bool) -> None:
    if not model.is_dir():
        raise QuantizeError(f"--model {model} is not a directory")
    if not (model / "config.json").is_file():
        raise QuantizeError(f"--model {model} has no config.json (not a Hugging Face "
                            "checkpoint directory)")
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"--out {out} exists and is not a directory")
    if out.resolve() == model.resolve():
        raise QuantizeError(f"--out {out} is the source model directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise QuantizeError(f"--out {out} exists and is not empty; pass --force to "
                                "replace it")
        if not (out / "config.json").is_file():
            raise QuantizeError(f"--out {out} is not empty and has no config.json; refusing "
                                "to replace it even with --force (not a checkpoint directory)")


# ------------------------------------------------------------------------------ quantize

def quantize(model: str | Path, scheme: str, out: str | Path, *, fmt: str = "modelslim",
             calib_prompts: int | None = None, calib_file: str | Path | None = None,
             group_size: int | None = None,
             w4a8_format: str = "new", moe_scheme: str | None = None, force: bool = False,
             symmetric_activations: bool = False, flatquant_transform: str = "random",
             seed: int = 0, quantization_config: bool = True, progress: bool = True,
             smooth_alpha: float | None = None, lm_head: str = "FLOAT") -> Path:
    """Write the quantized checkpoint of ``model`` into ``out`` and return ``out``."""
    from transformers import AutoConfig

    from vllm_ascend.tools import quantize_write
    from vllm_ascend.tools.quantize_calib import layer_stats, read_calibration_file
    from vllm_ascend.tools.quantize_math import activation_qparams
    from vllm_ascend.tools.quantize_smooth import ACT_QUANT, SmoothedSource, plan_smoothing

    model, out = Path(model), Path(out)
    if fmt not in FORMATS:
        raise QuantizeError(f"unknown --format {fmt!r}; accepted: {', '.join(FORMATS)}")
    scheme = canonical_scheme(scheme, fmt)
    if moe_scheme is not None:
        moe_scheme = moe_scheme.strip().upper()
        if moe_scheme not in MOE_SCHEMES:
            raise QuantizeError(f"unknown --moe-scheme {moe_scheme!r}; accepted: "
                                + ", ".join(MOE_SCHEMES))
    if w4a8_format not in W4A8_FORMATS:
        raise QuantizeError(f"unknown --w4a8-format {w4a8_format!r}; accepted: "
                            + ", ".join(W4A8_FORMATS))
    calib_texts = read_calibration_file(calib_file) if calib_file is not None else None
    if calib_prompts is None:  # default: the whole file, or 16 built-in prompts
        calib_prompts = len(calib_texts) if calib_texts else DEFAULT_CALIB_PROMPTS
    if calib_prompts < 1:
        raise QuantizeError(f"--calib-prompts must be >= 1, got {calib_prompts}")
    if flatquant_transform not in ("random", "identity"):
        raise QuantizeError(f"unknown --flatquant-transform {flatquant_transform!r}; "
                            "accepted: random, identity")
    check_inputs(model, out, force)

    config = AutoConfig.from_pretrained(str(model))
    hf_model = None
    if has_safetensors(model):
        source = Source(model)
    else:
        hf_model = load_model(model)
        source = Source(model, hf_model.state_dict())
    plan = make_plan(scheme, source.shapes, linear_names(config, source.shapes), moe_scheme, fmt)
    plan.lm_head = plan_lm_head(lm_head, config, source.shapes, fmt)
    group = resolve_group_size(plan, source.shapes, group_size, fmt)
    check_shapes(plan, source.shapes)
    _log(summary(plan, group, fmt))

    act_quant = {p: t for p, t in plan.linear.items() if t in ACT_QUANT}
    # Default: smooth when the chosen scheme quantizes activations (W8A8 / W8A8_DYNAMIC); the
    # W8A8_DYNAMIC companions of a W4A8_DYNAMIC MoE checkpoint stay as ModelSlim writes them.
    alpha = (0.5 if scheme in ACT_QUANT and act_quant else 0.0) if smooth_alpha is None \
        else float(smooth_alpha)
    if not 0 <= alpha <= 1 or (alpha and not act_quant):
        raise QuantizeError(f"--smooth-alpha {smooth_alpha} must be in [0, 1] and applies to "
                            "W8A8 / W8A8_DYNAMIC layers only")
    static = [p for p, t in act_quant.items() if t == "W8A8"]
    calib: dict[str, tuple[float, float]] = {}
    smoothing = None
    if static or alpha:
        stats = layer_stats(str(model), hf_model, sorted(act_quant if alpha else static),
                            calib_prompts, getattr(config, "vocab_size", 1000), seed, progress,
                            calib_texts)
        if alpha:
            smoothing = plan_smoothing(source, act_quant, stats, config, alpha)
            source = SmoothedSource(source, smoothing)
            _log(f"smoothing (alpha {alpha}): {smoothing.groups} input group(s)")
        for p in static:
            rng = smoothing.input_range(p, *stats[p]) if smoothing else \
                (float(stats[p][0].min()), float(stats[p][1].max()))
            calib[p] = activation_qparams(*rng, symmetric_activations)
    del hf_model

    options = quantize_write.Options(
        fmt=fmt, group=group, packed=w4a8_format == "new", calib=calib,
        symmetric_act=symmetric_activations, transform=flatquant_transform, seed=seed,
        progress=progress, smooth_alpha=alpha if smoothing else 0.0,
        smooth_groups=smoothing.groups if smoothing else 0,
        calib_source=Path(calib_file).name if calib_file is not None else "built-in prompts")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        writer = quantize_write.ShardWriter(tmp)
        entries = quantize_write.write_tensors(source, plan, options, writer)
        files = writer.close()
        config_dict = json.loads((model / "config.json").read_text())
        if fmt == "modelslim":
            description = quantize_write.description(plan, entries, options, w4a8_format,
                                                     calib_prompts if static else 0, model)
            (tmp / "quant_model_description.json").write_text(
                json.dumps(description, indent=2) + "\n")
            config_dict.pop("quantization_config", None)
            if quantization_config:
                config_dict["quantization_config"] = {"quant_method": "ascend"}
            if plan.lm_head and plan.lm_head.tied:
                config_dict["tie_word_embeddings"] = False
        else:
            from vllm_ascend.tools.quantize_ct import quantization_config as ct_config

            config_dict["quantization_config"] = ct_config(
                plan.dense_scheme, group, symmetric_activations,
                ["lm_head", *plan.float_linear])
        (tmp / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
        copy_side_files(model, tmp)
        _default_permissions(tmp)
        if out.is_dir():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _log(f"wrote {out} ({', '.join(files)}, {writer.total / 2**20:.1f} MiB of tensors)")
    return out


def summary(plan: Plan, group: int, fmt: str) -> str:
    counts: dict[str, int] = {}
    for t in (*plan.linear.values(), *plan.experts.values()):
        counts[t] = counts.get(t, 0) + 1
    text = ", ".join(f"{n} x {t}" for t, n in sorted(counts.items()))
    head = f"lm_head {plan.lm_head.quant_type}" + (" (untied)" if plan.lm_head.tied else "") \
        if plan.lm_head else "lm_head FLOAT"
    floats = f"; float: embeddings/norms + {len(plan.float_linear)} linear " \
             f"(router / kv_b_proj)" if plan.float_linear else ""
    return f"quantizing ({fmt}): {text} linear layer(s), {head}, group_size {group}{floats}"


def _default_permissions(directory: Path) -> None:
    """mkdtemp makes a 0700 directory (and safetensors 0600 files): give the checkpoint the
    permissions of an ordinary directory under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def copy_side_files(model: Path, out: Path) -> None:
    """Tokenizer, generation config, chat template...: every top-level file of the source
    except weights, config.json, a description and hidden files."""
    for path in sorted(model.iterdir()):
        name = path.name
        if not path.is_file() or name.startswith(".") or name in _SKIP_FILES \
                or name.endswith(_WEIGHT_FILES):
            continue
        shutil.copyfile(path, out / name)


# ------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vllm_ascend.tools.quantize",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="source checkpoint directory")
    p.add_argument("--scheme", required=True,
                   help="modelslim: " + ", ".join(MODELSLIM_SCHEMES)
                   + "; compressed-tensors: " + ", ".join(CT_SCHEMES))
    p.add_argument("--out", required=True, type=Path, help="directory to write")
    p.add_argument("--format", default="modelslim", choices=FORMATS, dest="fmt")
    p.add_argument("--calib-prompts", type=int, default=None,
                   help="prompts for static W8A8 calibration and smoothing statistics "
                   f"(default: all of --calib-file's, else {DEFAULT_CALIB_PROMPTS} built-in)")
    p.add_argument("--calib-file", type=Path, default=None,
                   help="calibration prompts: UTF-8 text, one per line, or .jsonl objects "
                   "with a 'text' (or 'prompt') field (default: built-in English prompts)")
    p.add_argument("--group-size", type=int, default=None,
                   help="group size of W4A8_DYNAMIC (default 256) / W4A16 / W8A16 (default "
                   "per-channel; 128 for compressed-tensors W4A16); 0 = per-channel")
    p.add_argument("--w4a8-format", default="new", choices=tuple(W4A8_FORMATS),
                   help="W4A8_DYNAMIC layout: new = packed 1.0.0 (default), legacy")
    p.add_argument("--moe-scheme", default=None, help="scheme of routed experts: "
                   + ", ".join(MOE_SCHEMES))
    p.add_argument("--symmetric-activations", action="store_true",
                   help="static W8A8: symmetric activation range (input_offset 0)")
    p.add_argument("--smooth-alpha", type=float, default=None,
                   help="SmoothQuant migration strength for W8A8 / W8A8_DYNAMIC (0 = off; "
                   "default 0.5 for --scheme W8A8 / W8A8_DYNAMIC, off otherwise)")
    p.add_argument("--lm-head", default="FLOAT", choices=LM_HEAD_CHOICES, type=str.upper,
                   help="scheme of the output projection (default FLOAT; modelslim format; a "
                   "tied lm_head is untied, the input embedding staying float)")
    p.add_argument("--flatquant-transform", default="random", choices=("random", "identity"))
    p.add_argument("--seed", type=int, default=0, help="FlatQuant transforms / random prompts")
    p.add_argument("--no-quantization-config", action="store_true",
                   help="modelslim: leave quantization_config out of config.json (vLLM then "
                   "needs --quantization ascend, or the description auto-detection)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = quantize(args.model, args.scheme, args.out, fmt=args.fmt,
                       calib_prompts=args.calib_prompts, calib_file=args.calib_file,
                       group_size=args.group_size,
                       w4a8_format=args.w4a8_format, moe_scheme=args.moe_scheme,
                       force=args.force, symmetric_activations=args.symmetric_activations,
                       flatquant_transform=args.flatquant_transform, seed=args.seed,
                       quantization_config=not args.no_quantization_config,
                       progress=not args.no_progress, smooth_alpha=args.smooth_alpha,
                       lm_head=args.lm_head)
    except QuantizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
