"""The model the pipeline carries: its state, loading by format, conversion to ONNX, input
signatures."""
