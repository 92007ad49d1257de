"""Dynamic expert-parallel load balancing (EPLB), the pure half.

Everything here is plain numpy (``choose_replica`` is torch: it runs in the forward) and
free of I/O except :mod:`placement_io`:

- :mod:`~vllm_ascend.eplb.policies`: placement policies, ``loads -> placement`` by name;
- :mod:`~vllm_ascend.eplb.placement`: the placement guard and the logical -> physical maps;
- :mod:`~vllm_ascend.eplb.metrics`: per-rank load and balancedness of a placement;
- :mod:`~vllm_ascend.eplb.transfer`: which rank sends which expert where on a rebalance;
- :mod:`~vllm_ascend.eplb.placement_io`: the versioned placement JSON file.

Vocabulary (shapes used throughout): ``L`` MoE layers, ``E`` logical experts, ``W`` EP
ranks, ``S`` physical slots (``S = E + redundant``, ``S % W == 0``), slots rank-major: rank
``r`` owns slots ``[r * S // W, (r + 1) * S // W)``. A *placement* is ``(L, S)`` int64, slot
-> logical expert id.
"""
