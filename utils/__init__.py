"""Everything the entry points share, one package per concern.

- `utils.files`: reading and writing what lives on disk (checkpoints, images, downloads, YAML, atomic writes).
- `utils.image`: pixel operations that are not the network (MATLAB's bicubic resize, a synthetic test chart).
- `utils.native`: building and loading the C++ kernels (compiler, cache, the shared vector header).
- `utils.runtime`: the inference runtime: the backends that run a fused LKDN, their C++ kernels, tiling, ONNX.
- `utils.measure`: the challenge's measurements (PSNR/SSIM, parameters/FLOPs/activations, runtime, memory).
- `utils.errors`, `utils.device`: the one-line user error and the `--device` flag, used by everything.

Imports run one way: entry points (test_demo.py, inference.py, train/, factsheet/, benchmarks/) -> runtime,
measure -> files, image, native -> models and errors. tests/test_layout.py checks it.
"""
