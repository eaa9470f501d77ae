"""The `quantize` stage: onnxruntime int8 (static, dynamic, auto, weight4), calibration,
fallback."""
