"""vLLM layers replaced through ``CustomOp.register_oot``, computing through the device facade."""
