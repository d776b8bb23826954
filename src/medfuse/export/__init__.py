"""Exporters (ONNX, torch.export) and parity verification."""
