"""Dynamic EPLB in a serving worker: recorder -> planner process -> guard -> mover, per step.

The worker calls :meth:`EplbRuntime.before_step` / :meth:`after_step` around every forward
pass (``vllm_ascend.worker.eplb_worker``). Per step, with no move pending, that is a row of
the load window cleared and nothing else. Every ``step_interval`` steps:

1. the window is all-gathered over the EP ranks (:meth:`LoadRecorder.gather`);
2. EP rank 0 checks its planner process (dead: logged, restarted once, then EPLB turns
   itself off), collects the result of the previous request if it is ready (never waits),
   and submits the new loads when no plan is being applied;
3. rank 0 broadcasts what it has (nothing, a plan, or "disable") to the EP ranks;
4. every rank runs the guard on each layer of a plan (a layer whose new placement loses an
   expert, holds two replicas of one expert on a rank or has the wrong slot count is
   rejected, logged, and keeps its placement) and queues the accepted layers' moves; the
   mover applies ``layers_per_step`` of them per step.

A plan is thus computed from one interval's loads while serving goes on, and applied from
the next interval. ``mode="stop_the_world"`` (comparison only) instead waits for the
planner and moves every layer at once, blocking the step.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch
import torch.distributed as dist

from vllm_ascend.eplb.config import EplbConfig, check_against_model, eplb_config_from
from vllm_ascend.eplb.forecast import horizon_for
from vllm_ascend.eplb.mover import ExpertMover, LayerMove
from vllm_ascend.eplb.placement import validate_placement
from vllm_ascend.eplb.planner import PlannerProcess, PlanRequest, PlanResult
from vllm_ascend.eplb.recorder import LoadRecorder
from vllm_ascend.eplb.slots import LayerSlots, linear_placement
from vllm_ascend.eplb.transfer import plan_layer
from vllm_ascend.logger import logger

#: Test-only fault injection, comma-separated: "placement" corrupts layer 0 of the first
#: plan (the guard must reject it), "transfer" fails the first move on EP rank 0.
FAULT_ENV = "VLLM_ASCEND_EPLB_FAULT"
FAULTS = ("placement", "transfer")
#: Seconds stop-the-world mode waits for the planner.
STOP_THE_WORLD_WAIT_S = 60.0


def _faults() -> set[str]:
    raw = os.environ.get(FAULT_ENV, "")
    faults = {f.strip() for f in raw.split(",") if f.strip()}
    unknown = faults - set(FAULTS)
    if unknown:
        raise ValueError(f"{FAULT_ENV}={raw!r}: unknown fault(s) {sorted(unknown)}; accepted: "
                         f"{', '.join(FAULTS)} (test-only)")
    return faults


class LayerEplb:
    """What one MoE layer's forward uses: the routing map and the recorder (``moe_forward``'s
    ``eplb`` argument)."""

    def __init__(self, slots: LayerSlots, recorder: LoadRecorder, layer_pos: int) -> None:
        self.slots, self.recorder, self.layer_pos = slots, recorder, layer_pos

    def to_physical(self, topk_ids: torch.Tensor) -> torch.Tensor:
        return self.slots.to_physical(topk_ids)

    def record(self, group_list: torch.Tensor) -> None:
        self.recorder.record(self.layer_pos, self.slots, group_list)


class EplbRuntime:
    """One worker's EPLB state (see the module docstring)."""

    def __init__(self, cfg: EplbConfig, layers: list[LayerSlots], group, ep_rank: int,
                 ep_size: int) -> None:
        self.cfg, self.layers, self.group = cfg, layers, group
        self.ep_rank, self.ep_size = ep_rank, ep_size
        self.num_experts, self.num_slots = layers[0].num_experts, layers[0].num_slots
        self.recorder = LoadRecorder(len(layers), self.num_experts, cfg.window_size)
        self.mover = ExpertMover(group, ep_rank, ep_size, cfg.layers_per_step,
                                 cfg.transfer_timeout_s, on_commit=self._committed)
        self.faults = _faults()
        self.planner = PlannerProcess() if ep_rank == 0 else None
        self.enabled = True
        self.step = 0
        self.rebalances = 0
        self._restarts = 0
        self._request_id = 0
        self._awaiting: int | None = None
        self._requested: np.ndarray | None = None  # the placement a request was planned from
        self._left_in_plan = 0
        self.balancedness: list[tuple[int, float]] = []  # (step, measured) per interval
        self.move_steps: list[int] = []  # steps during which an expert transfer was in flight
        self.hooks = [LayerEplb(slots, self.recorder, pos) for pos, slots in enumerate(layers)]

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_model(cls, vllm_config, model: torch.nn.Module) -> EplbRuntime | None:
        """The runtime for ``model`` (None when EPLB is off): expands every MoE layer to its
        physical slots and fills them with the start-up placement."""
        cfg = eplb_config_from(vllm_config.additional_config)
        if not cfg.enabled:
            return None
        from vllm.distributed import get_ep_group

        from vllm_ascend.ops.fused_moe.vllm_integration import AscendMoERunner

        runners = [m for m in model.modules() if isinstance(m, AscendMoERunner)]
        if not runners:
            raise ValueError("additional_config['ascend']['eplb'] is enabled but the model has "
                             "no MoE layer run by vllm-ascend")
        ep = get_ep_group()
        if ep.world_size != dist.get_world_size():
            raise NotImplementedError(
                f"EPLB needs the EP group to span every rank (EP {ep.world_size}, world "
                f"{dist.get_world_size()}): pipeline parallelism is not supported with EPLB")
        num_experts = runners[0].moe_config.num_experts
        num_slots = check_against_model(cfg, num_experts, ep.world_size)
        backend = "gloo" if ep.device_group is None or \
            dist.get_backend(ep.device_group) == "gloo" else None
        group = dist.new_group(ranks=list(ep.ranks), backend=backend)
        ep_rank = dist.get_rank(group)
        layers = []
        for runner in runners:
            slots = LayerSlots(runner.layer_name, runner.routed_experts, num_experts,
                               num_slots, ep_rank, ep.world_size)
            slots.expand()
            layers.append(slots)
        rt = cls(cfg, layers, group, ep_rank, ep.world_size)
        for runner, hook in zip(runners, rt.hooks):
            runner.attach_eplb(hook, num_slots)
        rt._fill(rt._start_placement())
        if rt.planner is not None:
            rt.planner.start()
            logger.info("EPLB: planner process started (pid %d), policy %s", rt.planner.pid,
                        cfg.policy_name)
        logger.info("EPLB on: %d MoE layers x %d slots (%d experts + %d redundant) over %d EP "
                    "ranks; window %d, interval %d, %d layer(s) per step, mode %s",
                    len(layers), num_slots, num_experts, cfg.num_redundant_experts,
                    ep.world_size, cfg.window_size, cfg.step_interval, cfg.layers_per_step,
                    cfg.mode)
        return rt

    def _start_placement(self) -> np.ndarray:
        """``(L, S)`` from ``expert_map_path``, else :func:`linear_placement` per layer."""
        if self.cfg.expert_map_path is None:
            row = linear_placement(self.num_experts, self.ep_size, self.num_slots)
            return np.tile(row, (len(self.layers), 1))
        from vllm_ascend.eplb.placement_io import PlacementFileError, load_placement

        path = self.cfg.expert_map_path
        stored = load_placement(path, num_experts=self.num_experts, num_ranks=self.ep_size,
                                num_slots=self.num_slots)
        missing = [s.layer_index for s in self.layers if s.layer_index not in stored.layer_ids]
        if missing:
            raise PlacementFileError(
                f"{path}: field 'layers' has no placement for MoE layer(s) {missing}; it has "
                f"{list(stored.layer_ids)}")
        return np.stack([stored.layer(s.layer_index) for s in self.layers])

    def _fill(self, target: np.ndarray) -> None:
        """Start-up: move every layer from what was loaded to ``target``, blocking."""
        moves = [LayerMove(s, row, plan_layer(s.placement, row, self.ep_size))
                 for s, row in zip(self.layers, target)]
        self._left_in_plan = len(moves)
        self.mover.run_blocking(moves)
        if self.mover.broken or self.mover.rejected:
            raise RuntimeError(f"EPLB: start-up expert placement failed: "
                               f"{self.mover.broken or 'a transfer failed'}")
        self.mover.committed = 0
        self._write_record()

    # -- per step ----------------------------------------------------------------------

    def before_step(self, kind: str | None) -> None:
        """Before a forward pass. ``kind``: "prefill" / "decode", None for a dummy batch."""
        if not self.enabled:
            return
        record = kind is not None and self.cfg.collect in ("all", kind)
        self.recorder.begin_step(self.step, record)
        if self.cfg.mode == "layerwise":
            self.mover.start()
            if self.mover.inflight is not None:
                self.move_steps.append(self.step)

    def after_step(self) -> None:
        if not self.enabled:
            return
        self.recorder.end_step()
        self.mover.finish()
        self.step += 1
        if self.step % self.cfg.step_interval == 0:
            try:
                self._interval()
            except RuntimeError as e:  # the EPLB group failed (e.g. a timed-out transfer)
                self.disable(f"EPLB collective failed: {str(e).splitlines()[0][:200]}")

    def _interval(self) -> None:
        if self.mover.broken:
            self.disable(self.mover.broken)
            return
        loads, rank_tokens = self.recorder.gather(
            self.group, self.ep_size, self.cfg.load_estimate,
            horizon_for(self.cfg.step_interval))
        self._log_balancedness(rank_tokens)
        msg = self._planner_turn(loads) if self.planner is not None else None
        msg = self._share(msg)
        kind, payload = msg if msg is not None else (None, None)
        if kind == "disable":
            self.disable(payload)
        elif kind == "plan":
            self._accept(payload)

    def _share(self, msg):
        """EP rank 0's ``msg`` on every EP rank: one 8-byte broadcast when there is none
        (most intervals), then the pickled message when there is one."""
        src = dist.get_global_rank(self.group, 0)
        device = self.recorder.loads.device
        data = pickle.dumps(msg) if self.ep_rank == 0 and msg is not None else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=device)
        dist.broadcast(size, src=src, group=self.group)
        n = int(size.item())
        if n == 0:
            return None
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
               if self.ep_rank == 0 else torch.empty(n, dtype=torch.uint8, device=device))
        dist.broadcast(buf, src=src, group=self.group)
        return msg if self.ep_rank == 0 else pickle.loads(buf.cpu().numpy().tobytes())

    def _planner_turn(self, loads: np.ndarray) -> tuple[str, object] | None:
        """EP rank 0: watch the planner, take a finished plan, submit the next request."""
        planner = self.planner
        if not planner.alive():
            status = planner.exit_status()
            if self._restarts >= 1:
                return ("disable", f"the planner process died again (exit status {status})")
            logger.error("EPLB: planner process (pid %s) died (exit status %s); restarting it",
                         planner.pid, status)
            planner.stop()
            planner.start()
            self._restarts += 1
            self._awaiting = None
            logger.info("EPLB: planner process restarted (pid %d)", planner.pid)
        result = None
        while (r := planner.poll()) is not None:
            if r.request_id == self._awaiting:
                result, self._awaiting = r, None
        if result is not None and result.error:
            logger.error("EPLB: the planner failed; placement unchanged:\n%s", result.error)
            result = None
        if result is None and self._awaiting is None and self.mover.idle \
                and self.recorder.steps_recorded:
            current = self.placements()
            self._request_id += 1
            self._awaiting, self._requested = self._request_id, current
            planner.submit(PlanRequest(self._request_id, self.cfg.policy_name, loads, current,
                                       self.ep_size, self.num_slots))
            if self.cfg.mode == "stop_the_world":
                result = planner.wait(STOP_THE_WORLD_WAIT_S)
                if result is not None and result.request_id == self._awaiting:
                    self._awaiting = None
                else:
                    result = None
        if result is None or result.placement is None:
            return None
        if "placement" in self.faults:
            self.faults.discard("placement")
            bad = result.placement.copy()
            bad[0, 1] = bad[0, 0]  # rank 0 holds one expert twice; another may be lost
            result = PlanResult(result.request_id, bad, result.plans, result.seconds)
        return ("plan", (result, self._requested))

    def _accept(self, payload) -> None:
        result, requested = payload
        moves = []
        for i, slots in enumerate(self.layers):
            new = result.placement[i]
            if np.array_equal(new, slots.placement):
                continue
            problems = validate_placement(new, self.num_experts, self.ep_size,
                                          num_slots=self.num_slots,
                                          layer_ids=[slots.layer_index])
            if problems:
                logger.warning("EPLB: rejected the new placement of layer %d (it keeps its "
                               "placement): %s", slots.layer_index, "; ".join(problems))
                continue
            plan = result.plans[i] if requested is not None and i < len(result.plans) and \
                np.array_equal(requested[i], slots.placement) else None
            moves.append(LayerMove(slots, new, plan or plan_layer(slots.placement, new,
                                                                  self.ep_size),
                                   tag=result.request_id))
        self.rebalances += 1
        moved = sum(len(m.plan) for m in moves)
        logger.info("EPLB: rebalance %d at step %d: %d layer(s), %d slot(s) to move "
                    "(planned in %.1f ms)", self.rebalances, self.step, len(moves), moved,
                    result.seconds * 1e3)
        if not moves:
            return
        if "transfer" in self.faults and self.ep_rank == 0:
            self.faults.discard("transfer")
            self.mover.fail_next = True
        self._left_in_plan = len(moves)
        if self.cfg.mode == "stop_the_world":
            self.move_steps.append(self.step - 1)  # blocks the step that just ran
            self.mover.run_blocking(moves)
        else:
            self.mover.enqueue(moves)

    def _committed(self, move: LayerMove) -> None:
        self._left_in_plan -= 1
        if self._left_in_plan == 0 and self.mover.idle:
            self._write_record()

    # -- state -------------------------------------------------------------------------

    def placements(self) -> np.ndarray:
        """``(L, S)`` the placement in force."""
        return np.stack([s.placement for s in self.layers])

    def _write_record(self) -> None:
        if self.cfg.record_path is None or self.ep_rank != 0:
            return
        from vllm_ascend.eplb.placement_io import save_placement

        save_placement(self.cfg.record_path,
                       {s.layer_index: s.placement for s in self.layers},
                       self.num_experts, self.ep_size)

    def _log_balancedness(self, rank_tokens: np.ndarray) -> None:
        """Measured over the window: mean over layers of (mean / max) rank tokens."""
        per_layer = rank_tokens.astype(np.float64)  # (W, L)
        peak = per_layer.max(0)
        used = peak > 0
        if not used.any():
            return
        value = float((per_layer.mean(0)[used] / peak[used]).mean())
        self.balancedness.append((self.step, value))
        if self.cfg.log_balancedness:
            logger.info("EPLB: step %d: balancedness %.4f over the last %d steps", self.step,
                        value, min(self.step, self.cfg.window_size))

    def disable(self, reason: str) -> None:
        """Stop rebalancing (the placement in force stays) and say why."""
        if not self.enabled:
            return
        self.enabled = False
        self.recorder.active = False
        self.mover.queue.clear()
        logger.error("EPLB disabled: %s; serving continues with the current placement", reason)
        self.close()

    def close(self) -> None:
        if self.planner is not None:
            self.planner.stop()

    @property
    def planner_pid(self) -> int | None:
        return None if self.planner is None else self.planner.pid


def worker_stats(worker) -> dict | None:
    """A worker's EPLB state, for ``LLM.collective_rpc(worker_stats)`` (None: EPLB off)."""
    rt = getattr(worker, "eplb", None)
    if rt is None:
        return None
    return {"enabled": rt.enabled, "step": rt.step, "rebalances": rt.rebalances,
            "committed": rt.mover.committed, "rejected": rt.mover.rejected,
            "restarts": rt._restarts, "planner_pid": rt.planner_pid, "ep_rank": rt.ep_rank,
            "placements": rt.placements().tolist(), "balancedness": rt.balancedness,
            "layers": [s.layer_index for s in rt.layers], "move_steps": rt.move_steps}
