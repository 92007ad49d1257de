"""Shared-weight series on real gloo process groups (2 and 4 ranks).

Every rank builds the toy stack (``toy.py``: 8 blocks, ``o_proj`` float32 or W8A8_DYNAMIC)
twice: unsharded (every layer loaded and processed, vLLM's own methods) and sharded over all
ranks (``plan_sharding`` -> load with the plan's filter -> process -> ``attach_sharding``).
Per rank, the parent checks:

- outputs: sharded == unsharded over two steps (the second runs on buffers the first step's
  last layers prefetched: the ring wrapped), eager and under ``torch.compile`` (fullgraph:
  the custom ops are in the graph; compared with the unsharded model compiled the same
  way); W8A8_DYNAMIC exactly (same int8 kernel, the received buffers' prepacked forms
  rebuilt), float32 within rounding (F.linear vs vLLM's CPU GEMM), and float32 against a
  float64 oracle;
- reads: a rank read no tensor of a layer it does not own;
- bytes: the series' live parameter + buffer storages on the rank, sharded vs unsharded:
  (owned layers + ring buffers) x layer bytes, about 1/N of unsharded plus the ring;
- order: a forward that skips layer 3 raises ``RingOrderError`` on every rank, naming the
  layer and the buffer.
"""

from __future__ import annotations

import datetime
import gc
import traceback

import pytest
import torch

from bench.procs import free_port

LAYERS = 8
M = 5  # tokens


def _series_bytes(model, ring=None) -> int:
    """Bytes of the distinct storages of every o_proj's parameters and buffers (+ ring)."""
    from tests.ut.shared_weight.toy import o_name

    seen = {}
    for i in range(LAYERS):
        m = model.get_submodule(o_name(i))
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    if ring is not None:
        for slot in ring.slots:
            for t in slot.values():
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _worker(rank: int, world: int, port: int, scheme: str, prefetch: int, out: str) -> None:
    torch.set_num_threads(1)
    result: dict = {}
    try:
        from vllm.config import VllmConfig, set_current_vllm_config
        from vllm.distributed import parallel_state as ps

        from tests.ut.shared_weight import toy
        from vllm_ascend.quantization import register
        from vllm_ascend.shared_weight.config import LayerShardingConfig
        from vllm_ascend.shared_weight.group import new_groups
        from vllm_ascend.shared_weight.ring import RingOrderError
        from vllm_ascend.shared_weight.sharding import attach_sharding, plan_sharding

        register()
        config = VllmConfig()
        with set_current_vllm_config(config):
            ps.init_distributed_environment(
                world_size=world, rank=rank, local_rank=rank, backend="gloo",
                distributed_init_method=f"tcp://127.0.0.1:{port}",
                timeout=datetime.timedelta(seconds=120))
            ps.initialize_model_parallel(1, 1)
            group = new_groups([tuple(range(world))], "gloo")
            lazy, deq = toy.checkpoint(LAYERS, scheme)
            qc = (lambda: toy.quant_config(LAYERS)) if scheme != "FLOAT" else (lambda: None)

            ref = toy.Toy(LAYERS, qc())
            toy.load(ref, lazy)
            loaded = _series_bytes(ref)  # float32: vLLM's CPU processing packs the weight
            toy.process(ref)            # into a oneDNN handle, outside any tensor

            model = toy.Toy(LAYERS, qc())
            cfg = LayerShardingConfig(layers=("o_proj",), prefetch_step=prefetch)
            plan = plan_sharding(model, cfg, group)
            result["read"] = toy.load(model, lazy, plan.skips)
            toy.process(model)
            (rt,) = attach_sharding(plan)
            ring = rt.ring
            del plan, rt  # the model alone keeps its runtime alive (vLLM's loader drops the plan)
            gc.collect()
            result["bytes"] = (loaded if scheme == "FLOAT" else _series_bytes(ref),
                               _series_bytes(model, ring))
            result["layer_bytes"] = sum(s.nbytes for s in ring.specs)
            result["slots"] = len(ring.slots)

            gen = torch.Generator().manual_seed(3)
            xs = [torch.randn(M, toy.K, generator=gen) for _ in range(2)]
            with torch.no_grad():
                result["ref"] = [ref(x) for x in xs]
                ref_compiled = torch.compile(ref, fullgraph=True, dynamic=False)
                result["ref_compiled"] = [ref_compiled(x) for x in xs]
                result["eager"] = [model(x) for x in xs]
                compiled = torch.compile(model, fullgraph=True, dynamic=False)
                result["stage"] = "compiled"
                result["compiled"] = [compiled(x) for x in xs]
                if scheme == "FLOAT":
                    result["oracle"] = [toy.oracle(x, LAYERS, lazy, deq) for x in xs]
                result["stage"] = "skip"
                try:
                    model(xs[0], skip=3)
                    result["skip"] = None
                except RingOrderError as e:
                    result["skip"] = str(e)
            result["broadcasts"] = ring.broadcasts
        torch.distributed.barrier()
        ps.destroy_model_parallel()
        ps.destroy_distributed_environment()
    except Exception:  # noqa: BLE001 - reported to the parent
        result["error"] = traceback.format_exc()
    torch.save(result, f"{out}.{rank}")


def _spawn(tmp_path, world: int, scheme: str, prefetch: int) -> list[dict]:
    import torch.multiprocessing as mp

    out = str(tmp_path / "r")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, scheme, prefetch, out))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    results = [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]
    errors = [f"rank {i}: {r['error']}" for i, r in enumerate(results) if "error" in r]
    assert not errors, "\n".join(errors)
    return results


@pytest.mark.parametrize("world, scheme, prefetch", [
    (2, "FLOAT", 1),
    (2, "W8A8_DYNAMIC", 0),
    (4, "FLOAT", 2),
    (4, "W8A8_DYNAMIC", 1),
])
def test_sharded_series_matches_unsharded(tmp_path, world, scheme, prefetch):
    from tests.ut.shared_weight.toy import o_name

    results = _spawn(tmp_path, world, scheme, prefetch)
    for rank, r in enumerate(results):
        for mode, base in (("eager", "ref"), ("compiled", "ref_compiled")):
            for step, (got, want) in enumerate(zip(r[mode], r[base])):
                if scheme == "FLOAT":
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                    torch.testing.assert_close(got.double(), r["oracle"][step], rtol=1e-4,
                                               atol=1e-4)
                else:
                    assert torch.equal(got, want), (rank, mode, step)
        # reads: only this rank's o_proj layers (and everything else)
        for i in range(LAYERS):
            mine = i % world == rank
            assert any(n.startswith(o_name(i) + ".") for n in r["read"]) == mine, (rank, i)
        # bytes, from the live storages: owned layers + ring buffers
        unsharded, sharded = r["bytes"]
        layer = r["layer_bytes"]
        assert unsharded == LAYERS * layer
        assert sharded == (LAYERS // world + r["slots"]) * layer
        assert r["slots"] <= prefetch + 1
        print(f"rank {rank}: {sharded / unsharded:.3f} of unsharded "
              f"({LAYERS // world} owned + {r['slots']} buffers of {layer} B)")
        # the skipped layer 3: refused at layer 4, on every rank, before any broadcast
        # of the wrong layer (prefetch 0: layer 4's start is due... after 3's)
        want = ("the prefetch of layer 4 is started but layer 3's is due" if prefetch == 0
                else f"the prefetch of layer {4 + prefetch} is started but layer "
                     f"{3 + prefetch}'s is due")
        assert r["skip"] is not None and want in r["skip"], r["skip"]
        assert "o_proj" in r["skip"]
