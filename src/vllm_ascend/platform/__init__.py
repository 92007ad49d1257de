"""vLLM platforms provided by the plugin: NPUPlatform (Ascend) and AscendCPUPlatform (CPU-hosted)."""
