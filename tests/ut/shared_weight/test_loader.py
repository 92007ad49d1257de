"""The sharding loader's safetensors filter: a non-owned layer's tensors are never read."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from vllm_ascend.shared_weight.loader import LOAD_FORMAT, LayerShardingLoader
from vllm_ascend.shared_weight.sharding import ShardingPlan


def test_skipped_tensors_are_counted_from_the_header_not_read(tmp_path, monkeypatch):
    tensors = {
        "model.layers.0.self_attn.o_proj.weight": torch.arange(12.0).reshape(3, 4),
        "model.layers.1.self_attn.o_proj.weight": torch.ones(3, 4),
        "model.layers.1.self_attn.o_proj.weight_scale": torch.ones(3, 1),
        "model.layers.1.self_attn.o_proj.bias": torch.full((3,), 2.0),
        "model.layers.1.mlp.down_proj.weight": torch.zeros(4, 4, dtype=torch.int8),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    plan = ShardingPlan(cfg=None, group=None, series=[],
                        skip_prefixes={"model.layers.1.self_attn.o_proj"})
    read = []
    import safetensors

    real = safetensors.safe_open

    class Spy:
        """safe_open whose get_tensor records names (get_slice reads the header only)."""

        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, name):
            return self.inner.get_slice(name)

        def get_tensor(self, name):
            read.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    stub = SimpleNamespace(counter_before_loading_weights=1.0, _skipped=[0, 0],
                           local_expert_ids=None)
    got = dict(LayerShardingLoader._filtered_safetensors(stub, [str(path)], "", plan))
    kept = {"model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.bias",
            "model.layers.1.mlp.down_proj.weight"}
    assert set(got) == kept and set(read) == kept
    for name in kept:
        assert torch.equal(got[name], tensors[name])
    assert stub._skipped == [2, 3 * 4 * 4 + 3 * 4]  # weight + weight_scale, fp32
    assert LOAD_FORMAT == "ascend_layer_sharding"


def test_loader_finds_the_checkpoint_files_under_its_own_load_format(tmp_path):
    """The platform sets load_format to LOAD_FORMAT (it selects this loader); vLLM's file
    discovery only knows its own formats, so the loader must still find the safetensors."""
    from vllm.config import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    from vllm_ascend.shared_weight.loader import register_loader

    register_loader()
    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    loader = get_model_loader(LoadConfig(load_format=LOAD_FORMAT))
    assert isinstance(loader, LayerShardingLoader)
    _, files, use_safetensors, _ = loader._prepare_weights(str(tmp_path), None, None, True, None)
    assert use_safetensors and files == [str(tmp_path / "model.safetensors")]
