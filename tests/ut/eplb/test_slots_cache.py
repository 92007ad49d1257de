"""A moved expert is what the GEMMs compute with: the reference backend caches weights
derived from a parameter (oneDNN int8 handles, A8W4 / i8 packs) until its version counter
changes, so :meth:`LayerSlots.unpack_into` must write through the parameter (a view under
no_grad), not ``.data``, which leaves the counter alone and keeps the old expert's packs."""

from __future__ import annotations

import torch

from vllm_ascend.device.reference import cpu_kernels as ck
from vllm_ascend.device.reference import matmul as mm
from vllm_ascend.eplb.slots import LayerSlots

E, K, N = 4, 32, 16


class Experts(torch.nn.Module):
    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        w = torch.randint(-127, 128, (E, K, N), generator=g, dtype=torch.int8)
        self.w13_weight = torch.nn.Parameter(w, requires_grad=False)
        self.w13_weight_scale = torch.nn.Parameter(torch.rand(E, N, generator=g) + 0.5,
                                                   requires_grad=False)


def gmm(x, module, exact=False):
    saved, ck.force_exact = ck.force_exact, exact
    try:
        return mm.npu_grouped_matmul(
            [x], [module.w13_weight], scale=[module.w13_weight_scale],
            group_list=torch.tensor([2, 2, 2, 2]), split_item=2, group_type=0,
            group_list_type=1, output_dtype=torch.float32)[0]
    finally:
        ck.force_exact = saved


def test_unpack_into_bumps_the_version_and_the_gemm_uses_the_new_expert():
    g = torch.Generator().manual_seed(0)
    module = Experts(g)
    slots = LayerSlots("model.layers.0.mlp.experts", module, E, E, 0, 1)
    x = torch.randint(-127, 128, (8, K), generator=g, dtype=torch.int8)
    with torch.inference_mode():
        before = gmm(x, module)  # builds (and caches) whatever the fast path derives
        assert torch.equal(before, gmm(x, module, exact=True))
        version = module.w13_weight._version
        slots.unpack_into(0, slots.pack(3))  # slot 0 now holds expert 3's tensors
        assert module.w13_weight._version > version
        assert torch.equal(module.w13_weight[0], module.w13_weight[3])
        after = gmm(x, module)
        assert torch.equal(after, gmm(x, module, exact=True))
        assert not torch.equal(after[:2], before[:2])  # rows of slot 0 changed
