"""What the int8/int4 linear schemes (W8A8, W8A8_DYNAMIC, W8A16, W4A16) share.

:class:`QuantLinearBase` registers checkpoint tensors as vLLM parameters whose loader is
*checked*: a tensor of the wrong shape or dtype raises :class:`QuantTensorError` naming the
checkpoint tensor (the shard's own name for fused layers, e.g. ``...k_proj.weight_scale``)
and its file, instead of vLLM's bare ``AssertionError``. Loads are recorded, so a tensor
that some shards of a fused layer provide and others do not is reported as missing.
Validation helpers map a bad output channel back to the shard that owns it.

After loading, weights go to the device layout with :func:`to_device_layout`:
``(N, K)`` -> ``(K, N)`` contiguous, then ``ops.npu_format_cast(w, 29)`` (FRACTAL_NZ).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vllm_ascend.device import ops
from vllm_ascend.quantization.methods._tensor_checks import replace_param
from vllm_ascend.quantization.methods.base import AscendLinearScheme

FORMAT_NZ = 29
_QKV = {"q": 0, "k": 1, "v": 2}
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = ["FLOATS", "FORMAT_NZ", "QuantLinearBase", "replace_param", "shard_index",
           "to_device_layout"]


def shard_index(loaded_shard_id: Any) -> int | None:
    """vLLM's ``loaded_shard_id`` ("q"/"k"/"v" or an int) -> shard position; None if whole."""
    if isinstance(loaded_shard_id, str):
        return _QKV.get(loaded_shard_id)
    if isinstance(loaded_shard_id, int) and not isinstance(loaded_shard_id, bool):
        return loaded_shard_id
    return None


def to_device_layout(weight_nk: torch.Tensor) -> torch.Tensor:
    """int8 ``(N, K)`` checkpoint weight -> ``(K, N)`` contiguous in FRACTAL_NZ (29)."""
    return ops.npu_format_cast(weight_nk.t().contiguous(), FORMAT_NZ)


def _decode_int64_scale(t: torch.Tensor) -> torch.Tensor:
    """ModelSlim's int64 ``deq_scale`` (fp16 models) carries the fp32 bit pattern in its low
    32 bits -> the fp32 values."""
    low = t.to(torch.int64) & 0xFFFFFFFF
    return torch.where(low >= 2**31, low - 2**32, low).to(torch.int32).view(torch.float32)


class QuantLinearBase(AscendLinearScheme):
    """Checked parameter registration and validation for the linear schemes."""

    def _begin(self, layer: torch.nn.Module, input_size_per_partition: int,
               output_partition_sizes: list[int], params_dtype: torch.dtype) -> None:
        """Remember the layer geometry; reset the load record."""
        self.k = input_size_per_partition
        self.widths = list(output_partition_sizes)
        self.n = sum(self.widths)
        self.params_dtype = params_dtype
        self._declared: dict[str, int] = {}
        self._loaded: set[tuple[str, int | None]] = set()
        layer.logical_widths = self.widths

    def _register(self, layer: torch.nn.Module, name: str, param_cls: type,
                  data: torch.Tensor, weight_loader: Callable, accept: tuple[torch.dtype, ...],
                  **param_kwargs: Any) -> None:
        """Register ``name`` as a ``param_cls`` whose loader checks dtype in ``accept`` and
        shape, converting (N,) -> (N, 1) and int64 scales -> fp32 on the way."""
        self._declared[name] = len(self.widths)

        def load(param, loaded_weight, *args, **kwargs):
            shard = shard_index(args[0] if args else kwargs.get("loaded_shard_id"))
            loaded_weight = self._convert(name, param, loaded_weight, accept, shard)
            try:
                weight_loader(param, loaded_weight, *args, **kwargs)
            except (AssertionError, RuntimeError, IndexError) as exc:
                raise self.tensor_error(
                    name, f"has shape {tuple(loaded_weight.shape)}, which does not fit this "
                    f"layer's parameter of shape {tuple(param.shape)} (output widths "
                    f"{self.widths} on this rank)", shard) from exc
            self._loaded.add((name, shard))

        layer.register_parameter(name, param_cls(data=data, weight_loader=load, **param_kwargs))

    def _convert(self, name: str, param: torch.Tensor, t: torch.Tensor,
                 accept: tuple[torch.dtype, ...], shard: int | None) -> torch.Tensor:
        if t.dtype not in accept:
            raise self.tensor_error(name, f"has dtype {t.dtype}; accepted: "
                                    + ", ".join(map(str, accept)), shard)
        if t.dtype == torch.int64 and param.dtype == torch.float32:
            t = _decode_int64_scale(t)
        if param.dim() == 2 and param.shape[1] == 1 and t.dim() == 1:
            t = t.reshape(-1, 1)
        elif param.dim() == 1 and t.dim() == 2 and t.shape[1] == 1:
            t = t.reshape(-1)
        return t

    # ------------------------------------------------------------------ after loading

    def _require_loaded(self) -> None:
        """Every declared tensor came from the checkpoint for every shard, once any did
        (nothing loaded means dummy weights: nothing to check)."""
        if not self._loaded:
            return
        for name, shards in self._declared.items():
            done = {s for n, s in self._loaded if n == name}
            if None in done:  # loaded whole (unfused layer, or fused on disk)
                continue
            for shard in range(shards):
                if shard not in done:
                    raise self.tensor_error(name, "is missing from the checkpoint (no such "
                                            "tensor was loaded)", shard if shards > 1 else None)

    def _offset_of(self, shard: int | None) -> int:
        return sum(self.widths[:shard]) if shard else 0

    def _shard_of_channel(self, channel: int) -> int | None:
        if len(self.widths) == 1:
            return None
        bound = 0
        for i, width in enumerate(self.widths):
            bound += width
            if channel < bound:
                return i
        return None

    def _check(self, name: str, t: torch.Tensor, *, nonzero: bool = True,
               per_shard: bool = False) -> torch.Tensor:
        """Finite (and non-zero) values. A bad output channel (dim 0) is reported against
        the shard owning it; with ``per_shard`` dim 0 indexes the shards themselves."""
        values = t.float()
        bad, what = ~torch.isfinite(values), "a non-finite value"
        if nonzero and not bool(bad.any()):
            bad, what = values == 0, "a zero"
        if not bool(bad.any()):
            return t
        idx = tuple(int(i) for i in bad.nonzero()[0])
        row = idx[0] if idx else 0
        if per_shard:
            shard, where = (row if len(self.widths) > 1 else None), ""
        else:
            shard = self._shard_of_channel(row)
            where = f" at output channel {row - self._offset_of(shard)}"
        rule = "scales must be finite and non-zero" if nonzero else "values must be finite"
        raise self.tensor_error(name, f"holds {what} ({values[idx].item()}){where}; {rule}",
                                shard)

    def _check_zero(self, name: str, t: torch.Tensor) -> None:
        """Offsets of symmetric weights must be 0 (a non-zero one would be ignored)."""
        nz = t != 0
        if bool(nz.any()):
            idx = tuple(int(i) for i in nz.nonzero()[0])
            shard = self._shard_of_channel(idx[0])
            raise self.tensor_error(
                name, f"holds a non-zero offset ({t[idx].item()}) at output channel "
                f"{idx[0] - self._offset_of(shard)}; this scheme takes symmetric weights "
                "(offsets all 0)", shard)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., K)`` -> ``(M, K)`` for the 2-d device ops."""
        return x.reshape(-1, self.k)

    def _unflat(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y.reshape(*x.shape[:-1], self.n)
