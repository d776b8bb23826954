"""The torch-free core: errors, the registry, the spec, the package format, preprocessing
statistics, probability and decision math, file readers, the input contract and the ONNX Runtime
predictor. Imports numpy, pyyaml and pydantic (onnxruntime, Pillow and the medical readers'
libraries when used); never torch."""
