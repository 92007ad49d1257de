"""A toy decoder stack for the shared-weight tests: ``L`` blocks, each one vLLM
``RowParallelLinear`` ``model.layers.i.self_attn.o_proj`` (float32 or W8A8_DYNAMIC through
the plugin's quant config) between float compute, plus an unsharded ``mlp.down_proj``.

``checkpoint(...)`` gives every layer's tensors (seeded by name: the same on every rank)
lazily, recording which names were read, and the float64 dequantized weights for the
oracle. Used inside the spawned ranks of ``test_sharding_mp``.
"""

from __future__ import annotations

import torch

K = 64  # hidden size (o_proj is K x K)


def o_name(i: int) -> str:
    return f"model.layers.{i}.self_attn.o_proj"


class Block(torch.nn.Module):
    def __init__(self, i: int, config) -> None:
        from vllm.model_executor.layers.linear import ReplicatedLinear, RowParallelLinear

        super().__init__()
        self.self_attn = torch.nn.Module()
        self.self_attn.o_proj = RowParallelLinear(K, K, bias=False, quant_config=config,
                                                  prefix=o_name(i), return_bias=False)
        self.mlp = torch.nn.Module()
        self.mlp.down_proj = ReplicatedLinear(K, K, bias=True, prefix=f"model.layers.{i}.mlp"
                                              ".down_proj", return_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn.o_proj(torch.tanh(x))
        return x + 0.5 * torch.tanh(self.mlp.down_proj(x))


class Toy(torch.nn.Module):
    def __init__(self, layers: int, config=None) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(Block(i, config) for i in range(layers))

    def forward(self, x: torch.Tensor, skip: int | None = None) -> torch.Tensor:
        for i, block in enumerate(self.model.layers):
            if i != skip:
                x = block(x)
        return x


def quant_config(layers: int):
    from tests.ut.quantization.layers import config_for

    return config_for({o_name(i): "W8A8_DYNAMIC" for i in range(layers)})


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(ord(c) * (j + 1) for j, c in enumerate(name)))


def checkpoint(layers: int, scheme: str):
    """``({tensor name: () -> tensor}, {o_proj name: float64 (K, K) weight})``."""
    from tests.ut.quantization.synth import quantize

    lazy, deq = {}, {}
    for i in range(layers):
        w = torch.randn(K, K, generator=_gen(o_name(i))) / K ** 0.5
        tensors, deq[o_name(i)] = quantize(o_name(i), w, scheme)
        for n, t in tensors.items():
            lazy[n] = (lambda t=t: t)
        down = f"model.layers.{i}.mlp.down_proj"
        lazy[f"{down}.weight"] = (lambda n=down: torch.randn(K, K, generator=_gen(n)) / K)
        lazy[f"{down}.bias"] = (lambda n=down: torch.randn(K, generator=_gen(n + "b")) / 10)
    return lazy, deq


def load(model: torch.nn.Module, lazy: dict, skips=lambda name: False) -> list[str]:
    """Load ``lazy`` through the parameters' vLLM weight loaders, not touching the names
    ``skips`` (the shared-weight loader's filter); returns the names read."""
    params = dict(model.named_parameters())
    read = []
    for name, get in lazy.items():
        if skips(name):
            continue
        read.append(name)
        param = params[name]
        param.weight_loader(param, get())
    return read


def process(model: torch.nn.Module) -> None:
    """vLLM's ``process_weights_after_loading`` loop over quant methods."""
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase):
            method.process_weights_after_loading(module)


def oracle(x: torch.Tensor, layers: int, lazy: dict, deq: dict,
           skip: int | None = None) -> torch.Tensor:
    """float64 forward of the float32 toy stack."""
    y = x.double()
    for i in range(layers):
        if i == skip:
            continue
        y = y + torch.tanh(y) @ deq[o_name(i)].t()
        down = f"model.layers.{i}.mlp.down_proj"
        w, b = lazy[f"{down}.weight"]().double(), lazy[f"{down}.bias"]().double()
        y = y + 0.5 * torch.tanh(y @ w.t() + b)
    return y
