"""Gaussian splatting: the render function (gsplat on CUDA, our PyTorch rasterizer on CPU)."""
