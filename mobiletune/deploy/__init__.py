"""Deployment: export a checkpoint to files that run without mobiletune (ONNX, TorchScript,
TFLite, Core ML), check each against PyTorch on real images, and quantize to int8."""
