"""The inference runtime: how a fused LKDN is run.

`backends.make_runner` picks one of `reference` (the module), `fast` (`fast.FastLKDN`), `native` (`native`,
the C++ kernels in `kernels/`) and `onnxruntime` (`onnx_export`); `tiling` runs any of them tile by tile with
the whole-image result.

May import `models`, `utils.files`, `utils.native` and `utils.errors`; never measurement or training.
"""
