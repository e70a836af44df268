"""One Predictor over every kind of model file: checkpoints (PyTorch, with the frozen part
in ONNX Runtime), TorchScript, ONNX and TFLite exports."""
