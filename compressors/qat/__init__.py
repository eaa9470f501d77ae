"""The `qat` stage: quantization-aware training with fake int8, then onnxruntime static QDQ."""
