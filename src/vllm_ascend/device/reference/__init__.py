"""Pure-PyTorch reference backend for the torch_npu operators the plugin calls.

Each submodule defines functions named exactly like the torch_npu operators
(``npu_*``), with the schema's argument names and defaults
(``shared/reference/torch_npu_schemas.txt``). ``OPS`` collects them all.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

from vllm_ascend.device.reference import activation, attention, fused, matmul, mc2, moe, quant

_MODULES: tuple[ModuleType, ...] = (quant, matmul, moe, activation, fused, attention, mc2)


def _collect() -> dict[str, Callable]:
    ops: dict[str, Callable] = {}
    for mod in _MODULES:
        for name in dir(mod):
            if name.startswith("npu_") and callable(getattr(mod, name)):
                if name in ops:
                    raise RuntimeError(f"reference op {name} defined twice ({mod.__name__})")
                ops[name] = getattr(mod, name)
    return ops


OPS: dict[str, Callable] = _collect()


def _fusions() -> dict[str, Callable]:
    from vllm_ascend.device.reference import moe_mlp_fast

    return {"grouped_swiglu_mlp": moe_mlp_fast.grouped_swiglu_mlp,
            "swiglu_moe": moe_mlp_fast.swiglu_moe}


#: Backend fusions (``facade.fusion``): name -> function returning None where it does not
#: apply. Each stands for a sequence of facade ops, which stay the oracle.
FUSIONS: dict[str, Callable] = _fusions()


def prepare() -> None:
    """Probe the CPU fast paths (``vllm_ascend._C``, vLLM's oneDNN int8 GEMM) now.

    The probes load libraries and are ``torch.compiler.disable``-d; run lazily inside a
    ``torch.compile`` trace (vLLM's fullgraph capture of the model) they would be a graph
    break, which vLLM refuses. ``Ops.bind`` calls this at plugin registration.
    """
    from vllm_ascend.device.reference import cpu_kernels, moe_mlp_fast

    cpu_kernels.native_available()
    cpu_kernels.onednn_available()
    moe_mlp_fast.available()
