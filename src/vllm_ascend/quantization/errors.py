"""The quantization package's error types: every bad checkpoint or config raises one of these.

Messages name the file, the field or tensor, and the accepted values.
"""


class AscendQuantizationError(ValueError):
    """Base class: a quantized checkpoint or config the plugin cannot use."""


class UnsupportedSchemeError(AscendQuantizationError):
    """A quantization type string with no registered scheme for the layer type."""


class DescriptionError(AscendQuantizationError):
    """``quant_model_description.json`` is missing, unreadable or inconsistent."""


class QuantTensorError(AscendQuantizationError):
    """A quantized tensor (weight, scale, offset, bias) is missing, misshapen or invalid."""
