"""The plugin's Inductor passes for vLLM's compiled path (``fusion``) and the pass manager the
platforms name through ``get_pass_manager_cls`` (``pass_manager``; under vLLM's CPU
platform, whose plain Inductor compile builds no pass manager, the worker installs the pass
with ``pass_manager.install_for_plain_inductor``)."""
