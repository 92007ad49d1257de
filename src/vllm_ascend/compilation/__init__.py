"""The plugin's Inductor passes for vLLM's compiled path (``fusion``) and the pass manager the
platforms name through ``get_pass_manager_cls`` (``pass_manager``)."""
