"""The `cuda_graph` backend: a fused LKDN's forward pass captured once as a CUDA graph and replayed.

A forward pass of LKDN-S launches a few hundred small kernels (86 convolutions, GELUs, LayerNorms, residual adds);
on a fast GPU launching them can cost as much as running them. A captured graph launches them all at once, with
the same kernels, so its output is the eager module's. The graph holds its input, output and activations at fixed
addresses for one input shape: a new shape is captured anew (the previous graph and its memory are released), so
the backend pays off where many inputs share a size (tiles, video frames, a benchmark loop) and costs an extra
forward pass per new size otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from utils.device import cuda_float32


class CudaGraphRunner:
    """Replays the module's forward pass captured for the last input shape; float32 (IEEE, or TF32 with `tf32`)."""

    def __init__(self, module: torch.nn.Module, tf32: bool = False, name: str = "cuda_graph") -> None:
        self.module, self.tf32, self.name = module, tf32, name
        self._key: tuple | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._input: Tensor | None = None
        self._output: Tensor | None = None
        self.captures = 0  # how many shapes were captured (each costs two eager passes)

    def __call__(self, lr: Tensor) -> Tensor:
        if not lr.is_cuda:
            raise ValueError("the cuda_graph backend runs CUDA tensors only")
        key = (tuple(lr.shape), lr.device)
        with torch.inference_mode(), cuda_float32(self.tf32):
            if key != self._key:
                self._capture(lr.float())
                self._key = key
            self._input.copy_(lr)
            self._graph.replay()
            return self._output.clone()

    def _capture(self, lr: Tensor) -> None:
        self._graph = self._input = self._output = None  # release the previous shape's memory first
        torch.cuda.empty_cache()
        static_input = lr.clone()
        side = torch.cuda.Stream(lr.device)
        side.wait_stream(torch.cuda.current_stream(lr.device))
        # a warm-up pass off the default stream: cuDNN and cuBLAS set up their algorithms and workspaces, which a
        # capture cannot do
        with torch.cuda.stream(side):
            self.module(static_input)
        torch.cuda.current_stream(lr.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.module(static_input)
        self._graph, self._input, self._output = graph, static_input, output
        self.captures += 1
