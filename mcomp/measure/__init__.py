"""Measuring models: metrics, evaluation, inference, MACs, onnxruntime sessions and profiles,
CPU features."""
