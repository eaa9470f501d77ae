"""The `cluster` stage: k-means weight sharing and its index-coded ONNX storage."""
