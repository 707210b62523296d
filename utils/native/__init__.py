"""Building the C++ kernels: compile a source on first use for this CPU, cache the library, load it with
ctypes; `vector.h` holds the vector helpers every kernel source includes. The kernels themselves live with
their users: `utils/runtime/kernels/` (inference) and `train/kernels/` (training's conv gradients).

Imports nothing of the repository.
"""
