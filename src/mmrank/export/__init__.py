"""Export a run's towers and CTR models for another runtime (ONNX), checked against PyTorch."""
