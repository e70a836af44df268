"""Deployment: export to files that run without mobiletune, and running them (ONNX Runtime, int8)."""
