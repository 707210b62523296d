"""Pixel operations that are not the network: MATLAB's bicubic `imresize` (how the challenge's LR images are
made) and a synthetic test chart for figures and tests.

Imports nothing of the repository but `utils.errors`.
"""
