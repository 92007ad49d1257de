"""NPUPlatform, NPUWorker and NPUCommunicator on a machine without an NPU.

- the platform's identity (enum, device type, dispatch key, HCCL, visible-devices variable);
- every qualified name it hands vLLM resolves (worker, attention backend, communicator);
- check_and_update_config on a real VllmConfig; attention selection and its errors;
- the facade-routed device helpers run on the CPU stand-in;
- the worker's device init and memory profiling with the device pieces faked;
- importing the NPU modules does not import torch_npu (subprocess).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from vllm.utils.import_utils import resolve_obj_by_qualname

from vllm_ascend.platform import npu as npu_platform
from vllm_ascend.platform.npu import NPUPlatform


def selector(**overrides):
    from vllm.v1.attention.selector import AttentionSelectorConfig

    fields = dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=None)
    fields.update(overrides)
    return AttentionSelectorConfig(**fields)


# ------------------------------------------------------------------------------ identity


def test_platform_identity():
    from vllm.platforms.interface import PlatformEnum

    p = NPUPlatform
    assert p._enum == PlatformEnum.OOT and NPUPlatform().is_out_of_tree()
    assert (p.device_name, p.device_type, p.dispatch_key) == ("npu", "npu", "PrivateUse1")
    assert (p.dist_backend, p.ray_device_key) == ("hccl", "NPU")
    assert p.device_control_env_var == "ASCEND_RT_VISIBLE_DEVICES"
    assert p.simple_compile_backend == "eager" and p.get_compile_backend() == "eager"
    assert p.supported_quantization == ["ascend", "compressed-tensors"]
    p.verify_quantization("ascend")
    with pytest.raises(ValueError, match="awq"):
        p.verify_quantization("awq")


def test_selection_constant_resolves_to_this_class():
    from vllm_ascend.platform.selection import NPU_PLATFORM

    assert resolve_obj_by_qualname(NPU_PLATFORM) is NPUPlatform


def test_qualnames_resolve():
    from vllm.distributed.device_communicators.base_device_communicator import (
        DeviceCommunicatorBase,
    )
    from vllm.v1.attention.backend import AttentionBackend
    from vllm.v1.worker.gpu_worker import Worker

    worker = resolve_obj_by_qualname(npu_platform.WORKER_CLS)
    assert issubclass(worker, Worker) and worker.__name__ == "NPUWorker"
    backend = resolve_obj_by_qualname(NPUPlatform.get_attn_backend_cls(None, selector()))
    assert issubclass(backend, AttentionBackend) and backend.get_name() == "ASCEND"
    comm = resolve_obj_by_qualname(NPUPlatform.get_device_communicator_cls())
    assert issubclass(comm, DeviceCommunicatorBase)
    for name in ("all_gatherv", "reduce_scatterv", "batch_isend_irecv"):
        assert getattr(comm, name) is not getattr(DeviceCommunicatorBase, name)


def test_communicator_reuses_variable_collectives(monkeypatch):
    from vllm_ascend.distributed import npu_communicator as nc
    from vllm_ascend.distributed import variable_collectives as vc

    calls = []
    monkeypatch.setattr(vc, "all_gatherv", lambda *a: calls.append(("ag", a)) or "g")
    monkeypatch.setattr(vc, "reduce_scatterv", lambda *a: calls.append(("rs", a)) or "r")
    comm = object.__new__(nc.NPUCommunicator)
    comm.device_group = "group"
    assert comm.all_gatherv("x", 1, [2, 3]) == "g"
    assert comm.reduce_scatterv("y", 0, None) == "r"
    assert calls == [("ag", ("x", "group", 1, [2, 3])), ("rs", ("y", "group", 0, None))]
    comm.batch_isend_irecv([])  # nothing to send: no torch.distributed call


# ------------------------------------------------------------------------------- config


@pytest.fixture
def vllm_config():
    from vllm.config import VllmConfig

    cfg = VllmConfig()
    cfg.parallel_config.worker_cls = "auto"
    cfg.cache_config.user_specified_block_size = False
    cfg.cache_config.block_size = 16
    return cfg


def test_check_and_update_config(vllm_config):
    from vllm.config import CompilationMode, CUDAGraphMode

    NPUPlatform.check_and_update_config(vllm_config)
    assert vllm_config.parallel_config.worker_cls == npu_platform.WORKER_CLS
    assert vllm_config.cache_config.block_size == 128
    assert vllm_config.compilation_config.mode == CompilationMode.NONE
    assert vllm_config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
    resolve_obj_by_qualname(vllm_config.parallel_config.worker_cls)


def test_check_and_update_config_keeps_user_choices(vllm_config):
    vllm_config.parallel_config.worker_cls = "my.Worker"
    vllm_config.cache_config.block_size = 64
    vllm_config.cache_config.user_specified_block_size = True
    NPUPlatform.check_and_update_config(vllm_config)
    assert vllm_config.parallel_config.worker_cls == "my.Worker"
    assert vllm_config.cache_config.block_size == 64


def test_check_and_update_config_validates_additional_config(vllm_config):
    vllm_config.additional_config = {"ascend": {"no_such_key": 1}}
    with pytest.raises(ValueError, match="no_such_key"):
        NPUPlatform.check_and_update_config(vllm_config)


def test_attention_selection_errors():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    with pytest.raises(NotImplementedError, match="MLA"):
        NPUPlatform.get_attn_backend_cls(None, selector(use_mla=True))
    with pytest.raises(NotImplementedError, match="sparse"):
        NPUPlatform.get_attn_backend_cls(None, selector(use_sparse=True))
    with pytest.raises(ValueError, match="FLASH_ATTN is not available"):
        NPUPlatform.get_attn_backend_cls(AttentionBackendEnum.FLASH_ATTN, selector())
    with pytest.raises(ValueError, match="head_size not supported"):
        NPUPlatform.get_attn_backend_cls(None, selector(head_size=72))
    with pytest.raises(ValueError, match="block_size not supported"):
        NPUPlatform.get_attn_backend_cls(None, selector(block_size=8))
    assert NPUPlatform.get_attn_backend_cls(
        AttentionBackendEnum["ASCEND"], selector(dtype=torch.float16, block_size=64)
    ) == npu_platform.ATTENTION_BACKEND_CLS


def test_lora_not_supported():
    with pytest.raises(NotImplementedError, match="LoRA is not supported on Ascend yet"):
        NPUPlatform.get_punica_wrapper()


def test_pre_register_and_update():
    NPUPlatform.pre_register_and_update(None)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quantization", choices=["awq", "fp8"])
    parser.add_argument("--other", choices=["a"])
    NPUPlatform.pre_register_and_update(parser)
    NPUPlatform.pre_register_and_update(parser)
    assert parser.parse_args(["--quantization", "ascend"]).quantization == "ascend"
    assert [a.choices for a in parser._actions[1:]] == [["awq", "fp8", "ascend"], ["a"]]
    free = argparse.ArgumentParser()
    free.add_argument("--quantization")
    NPUPlatform.pre_register_and_update(free)  # no choices list: left alone


# ------------------------------------------------------------------------ device helpers


def test_device_helpers_on_the_cpu_stand_in(monkeypatch):
    free, total = NPUPlatform.mem_get_info()
    assert type(free) is int and type(total) is int and 0 < free <= total
    assert NPUPlatform.get_device_total_memory(0) == total
    assert isinstance(NPUPlatform.get_device_name(0), str)
    assert NPUPlatform.get_device_uuid(0) == "npu-0"
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "3,5")
    assert NPUPlatform.get_device_uuid(1) == "npu-5"
    assert NPUPlatform.logical_device_id_to_visible_device_id(1) == 1
    NPUPlatform.set_device(torch.device("cpu"))
    NPUPlatform.synchronize()
    NPUPlatform.empty_cache()
    NPUPlatform.manual_seed_all(0)
    assert NPUPlatform.device_count() == 0
    assert NPUPlatform.get_current_memory_usage() > 0
    assert NPUPlatform.is_pin_memory_available()
    with NPUPlatform.inference_mode():
        assert torch.is_inference_mode_enabled()
    NPUPlatform.check_if_supports_dtype(torch.bfloat16)
    with pytest.raises(ValueError, match="torch.int8"):
        NPUPlatform.check_if_supports_dtype(torch.int8)


# -------------------------------------------------------------------------------- worker


@pytest.mark.parametrize("backend,dp_local,expected", [
    ("mp", 0, 1), ("mp", 2, 1 + 2 * 8), ("ray", 2, 1), ("external_launcher", 2, 1),
])
def test_dp_adjusted_local_rank(backend, dp_local, expected):
    from vllm_ascend.worker.npu_worker import dp_adjusted_local_rank

    pc = SimpleNamespace(distributed_executor_backend=backend, data_parallel_backend="mp",
                         nnodes_within_dp=1, data_parallel_rank_local=dp_local,
                         data_parallel_index=7, pipeline_parallel_size=2,
                         prefill_context_parallel_size=1, tensor_parallel_size=4)
    assert dp_adjusted_local_rank(pc, 1) == expected


def test_memory_snapshot_on_cpu():
    from vllm_ascend.worker.npu_worker import NPUMemorySnapshot

    snap = NPUMemorySnapshot(device=torch.device("cpu"))
    assert 0 < snap.free_memory <= snap.total_memory
    assert snap.torch_memory == 0 and snap.cuda_memory == snap.total_memory - snap.free_memory


@pytest.fixture
def fake_device(monkeypatch):
    """Scripted free memory per measurement and fixed allocator statistics."""
    from vllm_ascend.worker import npu_worker

    free = iter([100, 80, 70])
    monkeypatch.setattr(NPUPlatform, "mem_get_info",
                        classmethod(lambda cls, d=None: (next(free), 200)))
    stats = {"allocated_bytes.all.peak": 30, "allocated_bytes.all.current": 20}
    fakes = {
        "memory_stats": lambda d: stats,
        "memory_reserved": lambda d: 25,
        "reset_peak_memory_stats": lambda d: None,
    }
    monkeypatch.setattr(npu_worker, "device_fn", fakes.get)
    return npu_worker


def make_worker(npu_worker, vllm_config):
    worker = object.__new__(npu_worker.NPUWorker)
    worker.vllm_config = vllm_config
    worker.cache_config = vllm_config.cache_config
    worker.parallel_config = vllm_config.parallel_config
    worker.load_config = vllm_config.load_config
    worker.model_config = SimpleNamespace(dtype=torch.bfloat16, seed=0, multimodal_config=None)
    worker.local_rank, worker.rank, worker.distributed_init_method = 0, 0, "env://"
    return worker


def test_init_device_then_profile(fake_device, vllm_config, monkeypatch):
    npu_worker = fake_device
    calls = {}
    monkeypatch.setattr(npu_worker, "torch_device", lambda i: torch.device("cpu", i))
    monkeypatch.setattr(npu_worker, "set_random_seed", lambda seed: None)
    monkeypatch.setattr(npu_worker, "init_worker_distributed_environment",
                        lambda *a: calls.setdefault("dist", a))
    monkeypatch.setattr(npu_worker, "get_model_loader", lambda cfg: SimpleNamespace(
        get_external_weight_memory=lambda c: 0))
    monkeypatch.setattr(npu_worker.NPUWorker, "_init_workspace_and_model_runner",
                        lambda self: calls.setdefault("runner", True))
    vllm_config.cache_config.gpu_memory_utilization = 0.5
    worker = make_worker(npu_worker, vllm_config)
    worker.init_device()
    assert worker.device == torch.device("cpu", 0)
    assert calls["dist"][-1] == "hccl" and calls["runner"]
    assert (worker.init_snapshot.free_memory, worker.init_snapshot.total_memory) == (100, 200)
    assert worker.requested_memory == 100
    assert isinstance(worker._maybe_get_memory_pool_context("weights"), nullcontext)

    profiled = []
    worker.model_runner = SimpleNamespace(model_memory_usage=10,
                                          profile_run=lambda **kw: profiled.append(kw))
    vllm_config.cache_config.kv_cache_memory_bytes = None
    available = worker.determine_available_memory()
    # consumed = 100 - 70 free; headroom = peak 30 - current 20; 100 requested - 40.
    assert profiled and worker.total_consumed == 30 and worker.peak_activation_memory == 10
    assert available == 60


def test_profiling_rejects_memory_released_elsewhere(fake_device, vllm_config, monkeypatch):
    npu_worker = fake_device
    worker = make_worker(npu_worker, vllm_config)
    worker.init_snapshot = npu_worker.NPUMemorySnapshot(device=torch.device("cpu"))  # free 100
    monkeypatch.setattr(NPUPlatform, "mem_get_info", classmethod(lambda cls, d=None: (150, 200)))
    worker.requested_memory = 100
    worker.model_runner = SimpleNamespace(model_memory_usage=0, profile_run=lambda **kw: None)
    vllm_config.cache_config.kv_cache_memory_bytes = None
    with pytest.raises(RuntimeError, match="released device memory"):
        worker.determine_available_memory()


# ---------------------------------------------------------------------------- subprocess


_IMPORT_PROBE = """
import builtins, importlib, sys
CALLERS = []
_import, _import_module = builtins.__import__, importlib.import_module

def _record(name, depth):
    if name == "torch_npu" or name.startswith("torch_npu."):
        CALLERS.append(sys._getframe(depth).f_code.co_filename)

def probe_import(name, *args, **kwargs):
    _record(name, 2)
    return _import(name, *args, **kwargs)

def probe_import_module(name, package=None):
    _record(name, 2)
    return _import_module(name, package)

builtins.__import__, importlib.import_module = probe_import, probe_import_module
"""


def test_npu_modules_do_not_import_torch_npu(tmp_path):
    # Every attempt to import torch_npu is recorded with the importing file. A stand-in
    # torch_npu is importable, so the third-party libraries vLLM loads (accelerate) do
    # import it: that shows the probe works. No vllm_ascend file may.
    # VLLM_ASCEND_PLATFORM=off keeps the platform probe (facade.npu_available) out.
    (tmp_path / "torch_npu.py").write_text("IMPORTED = True\n")
    env = dict(os.environ, VLLM_ASCEND_PLATFORM="off")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    code = _IMPORT_PROBE + textwrap.dedent("""
        import vllm_ascend
        import vllm_ascend.platform.npu, vllm_ascend.worker.npu_worker
        import vllm_ascend.attention.npu_attention, vllm_ascend.distributed.npu_communicator
        package = vllm_ascend.__file__.rsplit("/", 1)[0]
        ours = [c for c in CALLERS if c.startswith(package)]
        assert not ours, ours
        assert CALLERS, "the probe saw no import of the stand-in at all"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
