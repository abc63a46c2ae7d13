"""The lectures' models, built to run fast on a CPU.

``lecture_cnn()`` is the network of the lectures' optimizer showdown (Keras)::

    Conv2D(32, 3x3, ReLU) -> MaxPooling2D(2x2) -> Dropout(0.25) -> Flatten -> Dense(10)

Plain PyTorch runs this model about 1.5x slower than Keras on TensorFlow on a
CPU, and not because of the data loader: two kernels dominate. Max-pooling
in torch's default NCHW layout is several times slower than in channels_last
(NHWC), and dropout's ``bernoulli_`` is several times slower than drawing a
uniform tensor and comparing it. This module fixes both in the model itself,
so every user of the model gets the speed with no change to their loop:

* ``ChannelsLastConv2d`` keeps its weight in channels_last strides. With one
  input channel ``model.to(memory_format=torch.channels_last)`` does nothing
  (the strides of a 1-channel tensor are ambiguous, so torch keeps NCHW); an
  explicitly strided weight makes oneDNN return its output in channels_last,
  so pooling, ReLU and dropout all run on NHWC memory.
* ``FlattenHWC`` flattens in (height, width, channel) order, which is a free
  view of channels_last memory (``nn.Flatten`` would copy it back to NCHW
  first). It is also Keras's ``Flatten`` order.
* ``FastDropout`` keeps each element with probability ``1 - p`` and scales it by
  ``1 / (1 - p)``, independently: the law of ``nn.Dropout``. Its mask compares
  uniform random bytes (8 per 64-bit draw of torch's generator) with a threshold,
  an eighth of the generator calls of ``rand_like`` and a tenth of the time of
  ``bernoulli_`` on a CPU.
* ReLU is applied after pooling: ``max`` and ReLU commute, so the result is
  identical and ReLU touches a quarter of the elements.
* ``lecture_cnn()`` calls :func:`optimlab.cpu.tune_allocator`, so the
  megabytes of tensors each step allocates are reused from the heap instead
  of being page-faulted in from fresh ``mmap`` memory every step.

``lecture_cnn(fast=False)`` builds the textbook PyTorch version of the same
network (NCHW, ``nn.Dropout``, ``nn.Flatten``) for comparison.

On a GPU. The layers decide by the device they run on, so one model (one
``state_dict``, one checkpoint) trains on either and moves between them:
``FastDropout`` is ``F.dropout`` on any device but the CPU (its byte trick only
helps the CPU's serial generator); the convolution keeps its channels_last weight
on CUDA too, where cuDNN runs NHWC convolutions natively and NVIDIA advises that
layout for mixed precision (not measured here: this machine has no GPU); flatten
and pooling are layout-agnostic. ``tune_allocator`` concerns the CPU heap only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from optimlab.cpu import tune_allocator

__all__ = ["ChannelsLastConv2d", "FastDropout", "FlattenHWC", "LectureCNN", "lecture_cnn",
           "to_channels_last"]


def to_channels_last(t: torch.Tensor) -> torch.Tensor:
    """A copy of a 4-d tensor with channels_last strides, even when C == 1.

    ``t.contiguous(memory_format=torch.channels_last)`` returns ``t`` itself when
    the layout is ambiguous (a dimension of size 1), which torch then treats as NCHW.
    """
    n, c, h, w = t.shape
    out = torch.empty_strided(t.shape, (h * w * c, 1, w * c, c), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


class ChannelsLastConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is stored channels_last, so its output is channels_last.

    Same parameters, same state_dict keys and the same results as ``nn.Conv2d``
    (up to the summation order inside the convolution kernel).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.weight = nn.Parameter(to_channels_last(self.weight.detach()))

    def _apply(self, fn, recurse=True):
        # .to(device) / .double() build new tensors; keep the strides that make the speed.
        out = super()._apply(fn, recurse)
        w = self.weight
        if w.dim() == 4 and w.stride(1) != 1:
            w.data = to_channels_last(w.data)  # same Parameter object: optimizers stay valid
        return out


class FastDropout(nn.Module):
    """Dropout with the law of ``nn.Dropout(p)`` and a cheaper mask.

    Training: ``y = x · 1[b ≥ k] / (1 − p)`` with ``b`` uniform random integers of
    ``w`` bits, one per element, cut from 64-bit draws of torch's generator, and
    ``k = p·2^w``: 8-bit lanes when ``p·256`` is a whole number (0.25, 0.5, ...),
    else 16-bit lanes when ``p·65536`` is, and then the probability ``1 − p`` is exact;
    otherwise 32-bit lanes with ``k = ⌈p·2^32⌉``, within 2^-32 of ``1 − p`` (finer than
    a float32 uniform's 2^-24). Evaluation: ``y = x``. The mask keeps ``x``'s memory
    layout (channels_last stays channels_last). On any other device than the CPU (CUDA,
    whose generator is parallel) it is ``F.dropout(x, p)``: the same law, torch's kernel.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got p={p!r}")
        self.p = float(p)
        self.lane, self.threshold = _lanes(self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":  # the byte trick speeds up the CPU's serial generator only
            return F.dropout(x, self.p, training=True)
        if self.p == 1.0:
            return x * 0.0
        return x * self.mask(x)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """``1[keep] / (1 − p)`` in ``x``'s dtype, shape and strides."""
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        n = x.numel()
        words = torch.empty((n * self.lane.itemsize + 7) // 8, dtype=torch.int64, device=x.device)
        words.random_(-2**63, None)  # every bit uniform (random_() alone leaves the sign bit 0)
        lanes = words.view(self.lane)[:n].as_strided(x.shape, x.stride())
        return (lanes >= self.threshold).to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _lanes(p: float) -> tuple[torch.dtype, int]:
    """The narrowest signed integer lanes in which ``P(b ≥ k) = 1 − p`` (exactly if possible)."""
    for dtype, bits in ((torch.int8, 8), (torch.int16, 16)):
        scaled = p * 2**bits
        if scaled == int(scaled):
            return dtype, int(scaled) - 2 ** (bits - 1)  # signed lanes: b + 2^(bits-1) ≥ p·2^bits
    return torch.int32, math.ceil(p * 2**32) - 2**31


class FlattenHWC(nn.Module):
    """Flatten ``(N, C, H, W)`` to ``(N, H·W·C)`` in height, width, channel order
    (Keras's order). A view, no copy, when the input is channels_last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class LectureCNN(nn.Module):
    """Conv2D(filters, 3x3) → ReLU → MaxPool 2x2 → Dropout → Flatten → Dense(num_classes).

    Outputs logits (use cross-entropy). Layers: ``conv``, ``dropout``, ``dense``.
    ``fast=True`` (default) uses the channels_last layers of this module;
    ``fast=False`` the textbook PyTorch layers. The two compute the same
    function family; their dense weights differ only by the flatten order.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 filters: int = 32, dropout: float = 0.25, *, fast: bool = True):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("image_size", image_size), ("filters", filters)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4 for a 3x3 conv and a 2x2 pool, got image_size={image_size}")
        self.fast = bool(fast)
        conv = ChannelsLastConv2d if fast else nn.Conv2d
        self.conv = conv(in_channels, filters, kernel_size=3)
        self.dropout = FastDropout(dropout) if fast else nn.Dropout(dropout)
        self.flatten = FlattenHWC() if fast else nn.Flatten()
        side = (image_size - 2) // 2
        self.dense = nn.Linear(filters * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.fast:
            h = F.relu_(F.max_pool2d(h, 2))  # = pool(relu(h)): max and ReLU commute
        else:
            h = F.max_pool2d(F.relu(h), 2)
        return self.dense(self.flatten(self.dropout(h)))


def lecture_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, *,
                filters: int = 32, dropout: float = 0.25, fast: bool = True) -> LectureCNN:
    """The lectures' CNN for 28x28 grey images (MNIST, Fashion-MNIST), fast on CPU.

    >>> model = lecture_cnn()                      # doctest: +SKIP
    >>> model(torch.rand(64, 1, 28, 28)).shape     # doctest: +SKIP
    torch.Size([64, 10])
    """
    if fast:
        tune_allocator()  # optimlab.cpu: the per-step tensors stay in the heap, no page faults
    return LectureCNN(in_channels, num_classes, image_size, filters, dropout, fast=fast)
