"""A stand-in for torchvision, for spandrel's import only (tests/test_spandrel.py).

spandrel imports torchvision for two architectures (LaMa, RestoreFormer) that LKDN's tests never load, and
torchvision cannot be installed beside the CPU build of torch this repository pins (its compiled operators need
the CUDA build). Anything used from here raises, so no test can pass through it by accident.
"""
