"""Checkpoints of the accuracy configs: ``model_name`` (+ ``quantization``) -> a directory.

- ``tiny-adder``: the committed, trained checkpoint ``tiny_adder/model``;
- ``smollm2-135m``: the README's default model (``vllm_ascend.tools.prepare_model``);
- ``tiny-qwen3-moe``: ``vllm_ascend.tools.tiny_model --arch qwen3_moe`` (seed 0).

A config with ``quantization`` gets the fp32 checkpoint quantized by
``vllm_ascend.tools.quantize --scheme ... [quantize_args]`` into a cache directory keyed by the
source checkpoint's files, the scheme, the arguments and the quantizer's sources (so a
change to any of them quantizes again). Cache root: ``$VLLM_ASCEND_ACCURACY_CACHE``, else
``~/.cache/vllm-ascend/accuracy``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.accuracy.config import Config

HERE = Path(__file__).parent
REPO = HERE.parents[2]
TINY_ADDER = HERE / "tiny_adder" / "model"
MODEL_NAMES = ("tiny-adder", "smollm2-135m", "tiny-qwen3-moe")


def cache_root() -> Path:
    env = os.environ.get("VLLM_ASCEND_ACCURACY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vllm-ascend" / "accuracy"


def _digest(paths: list[Path], *extra: str) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for e in extra:
        h.update(e.encode() + b"\n")
    return h.hexdigest()[:16]


def base_checkpoint(model_name: str) -> Path:
    if model_name == "tiny-adder":
        return TINY_ADDER
    if model_name == "smollm2-135m":
        from vllm_ascend.tools.prepare_model import prepare

        return prepare()
    if model_name == "tiny-qwen3-moe":
        out = cache_root() / "tiny-qwen3-moe-seed0"
        if not (out / "model.safetensors").is_file():
            from vllm_ascend.tools.tiny_model import generate

            generate("qwen3_moe", out, seed=0, force=True)
        return out
    raise ValueError(f"model_name {model_name!r}; accepted: {', '.join(MODEL_NAMES)}")


def checkpoint(cfg: Config, env: dict[str, str] | None = None) -> Path:
    """The directory ``cfg`` evaluates (quantized into the cache on first use)."""
    src = base_checkpoint(cfg.model_name)
    if not cfg.quantization:
        return src
    tools = sorted((REPO / "src" / "vllm_ascend" / "tools").glob("quantize*.py"))
    # files named in quantize_args (a --calib-file) are part of the key too
    named = [REPO / a for a in cfg.quantize_args if (REPO / a).is_file()]
    key = _digest([*src.iterdir(), *tools, *named], cfg.quantization, *cfg.quantize_args)
    out = cache_root() / f"{cfg.model_name}-{cfg.quantization.lower()}-{key}"
    if (out / "config.json").is_file():
        return out
    cmd = [sys.executable, "-m", "vllm_ascend.tools.quantize", "--model", str(src),
           "--scheme", cfg.quantization, "--out", str(out), "--no-progress", "--force",
           *cfg.quantize_args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"quantizing {src} with {cfg.quantization} failed:\n"
                           f"{proc.stderr[-4000:]}")
    return out
