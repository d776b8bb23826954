"""Export (ONNX, torch.export) and parity verification of packages."""

#: the ONNX opset ``medfuse export`` and ``medfuse quantize`` write by default (here, not in
#: ``medfuse.export.onnx``, so the verbs' parsers need no torch)
DEFAULT_OPSET = 17
