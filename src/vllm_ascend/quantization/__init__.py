"""Ascend quantization: ModelSlim (``--quantization ascend``) and compressed-tensors checkpoints,
mapped onto one registry of schemes (``methods/``) that compute through the device facade."""
