"""A stand-in CUDA device for checking device discipline on a CPU-only machine.

Inside ``fake_cuda()``, a tensor moved to ``cuda`` (``.to("cuda")``, ``.cuda()``, a module's
``.to``) becomes a ``FakeTensor``: it carries shape, dtype and device but no data, and an
operation mixing it with a CPU tensor raises as it would on a GPU. Everything else runs for
real. A fake tensor has no values, so the code under test can be followed only up to its
first step that reads one (``.item()``, a data-dependent shape); the GPU check
(``tests/models/test_cuda.py``) runs the rest where a GPU is lent.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode


def _to_cuda(args: tuple, kwargs: dict) -> bool:
    target = kwargs.get("device")
    for arg in args:
        if isinstance(arg, str | torch.device):
            target = arg
    return target is not None and torch.device(target).type == "cuda"


@contextmanager
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if _to_cuda(args, kwargs) and not isinstance(self, FakeTensor):
            with mode:
                return real_to(self, *args, **kwargs)
        return real_to(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "to", to)
        patch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: to(self, "cuda"))
        yield
