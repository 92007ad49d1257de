"""Shared-weight linear layers: each layer of a series stored on one rank of the sharding
group, prefetched into a ring of buffers by async broadcast (docs/shared_weight.md).

``config`` (the ``layer_sharding`` section) -> ``activate`` (platform: selects the loader)
-> ``loader`` (group, plan, filtered reads, attach) -> ``sharding`` (plan / attach, the
runtime) -> ``series`` (find + validate), ``group``, ``ring``, ``method`` + ``custom_ops``
(the forward).
"""
