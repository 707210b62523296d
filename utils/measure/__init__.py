"""The challenge's measurements: PSNR and SSIM on the Y channel (`metrics`), parameters, FLOPs, activations and
conv count (`model_summary`), runtime and peak memory (`timing`).

May import `utils.files`, `utils.image` and `utils.errors`; never the runtime or training.
"""
