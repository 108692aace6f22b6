"""Local response normalisation across channels (section 3.3), written to be cheap on the CPU.

    b_c = a_c / (k + alpha * sum of a_j^2 over the n channels j around c)^beta

with the paper's n=5, alpha=1e-4 (NOT divided by n), beta=0.75, k=2, the window clipped at the
first and last channel. PyTorch's `nn.LocalResponseNorm` computes the same thing with alpha
divided by n, but as a chain of autograd ops (pad, avg_pool3d, pow) that keeps several
full-size intermediates and walks memory a dozen times; on a CPU it costs ~40% of an AlexNet
training step, this one a few per cent (bench/speed.py). Forward and backward are written out
by hand:

- the work runs a chunk of images at a time, so every intermediate stays in cache and only
  the input is read and the output written at full size;
- only the input is saved for backward (s is recomputed there). In AlexNet the in-place ReLU
  before the LRN already keeps that tensor, so the layer costs no activation memory;
- the window sum is n - 1 adds of shifted flat ranges of a padded buffer whose edges hold
  k / n, so the sums come out as s itself, clipped window included (see _Workspace);
- s^-0.75 is rsqrt(s) * sqrt(rsqrt(s)), not a fractional `pow` (other betas use `pow`).

Backward, with s_c = k + alpha * sum_{j in W(c)} a_j^2 and g the incoming gradient:

    dL/da_j = g_j s_j^-beta - 2 alpha beta a_j * sum_{c : j in W(c)} g_c b_c / s_c

For odd n the window is symmetric (j in W(c) iff c in W(j)), so the second sum is the same
clipped window sum; for even n it is the mirrored window. Half-precision inputs (autocast)
are computed in float32 and returned in their own dtype. Plain torch ops only, so the same
code runs on CUDA, where it takes the whole batch in one chunk.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# Elements of input per chunk on the CPU: one image at conv1 (96x55x55), two at conv2. Of
# 2^17 to 2^21, 2^19 was the fastest; smaller chunks pay per-op overhead (~25 ops a chunk),
# larger ones fall out of cache.
CPU_CHUNK_ELEMENTS = 1 << 19


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _is_channels_last(x: torch.Tensor) -> bool:
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def _chunks(x: torch.Tensor):
    """Index tuples that walk x in chunks of about CPU_CHUNK_ELEMENTS: whole images, or rows
    of one image when an image is bigger than that; on other devices, the whole batch."""
    n, rows, per_image = x.shape[0], x.shape[2], math.prod(x.shape[1:])
    if x.device.type != "cpu":
        yield (slice(None),)
    elif per_image <= CPU_CHUNK_ELEMENTS:
        step = CPU_CHUNK_ELEMENTS // max(1, per_image)
        for i in range(0, n, step):
            yield (slice(i, i + step),)
    else:
        step = max(1, rows * CPU_CHUNK_ELEMENTS // per_image)
        for i in range(n):
            for r in range(0, rows, step):
                yield (slice(i, i + 1), slice(None), slice(r, r + step))


class _Workspace:
    """Scratch space for one chunk, reused for every chunk of a call.

    Each buffer is dense, in the input's layout, with `size - 1` extra channels, so moving one
    channel along is moving `cstride` elements along the flat memory (H*W for NCHW, 1 for
    channels-last) and a window sum over channels is `size - 1` adds of shifted flat ranges,
    contiguous whatever the layout. The sum for channel c lands at padded index c, so the
    results are the first C channels of a buffer.

    Two buffers hold the values to sum between constant edges: `squares` holds
    alpha * x^2 + k / size with edges k / size, so that its window sums are s itself (k plus
    alpha times the squares, the window clipped at the first and last channel); `terms` holds
    the gradient's terms with edges 0, offset for the mirrored window (the same window for odd
    sizes). Views are made once per chunk shape: per-op overhead is what limits small chunks.
    """

    def __init__(self, x: torch.Tensor, size: int, k: float):
        self.c, self.size = x.shape[1], size
        self.channels_last = _is_channels_last(x)
        per_chunk = min(x.numel(), max(math.prod(x.shape[1:]), CPU_CHUNK_ELEMENTS))
        if x.device.type != "cpu":
            per_chunk = x.numel()
        capacity = per_chunk // self.c * (self.c + size - 1)
        kw = dict(dtype=_compute_dtype(x.dtype), device=x.device)
        self.storage = [torch.empty(capacity, **kw) for _ in range(5)]
        self.edge = torch.full((), k / size, **kw)
        self.shape = None

    def bind(self, xc: torch.Tensor) -> None:
        """Shape the buffers for this chunk (a no-op when the shape is the last one's)."""
        shape = (xc.shape[0], self.c + self.size - 1, *xc.shape[2:])
        if shape == self.shape:
            return
        self.shape, numel, c = shape, math.prod(shape), self.c
        if self.channels_last:
            n, cp, h, w = shape
            views = [t[:numel].view(n, h, w, cp).permute(0, 3, 1, 2) for t in self.storage]
        else:
            views = [t[:numel].view(shape) for t in self.storage]
        flat = [t[:numel] for t in self.storage]  # the same memory, in its own order
        squares, terms, s, p, scratch = views
        front, back = self.size // 2, (self.size - 1) // 2
        squares[:, :front].fill_(self.edge)
        squares[:, front + c :].fill_(self.edge)
        terms[:, :back].zero_()
        terms[:, back + c :].zero_()

        cs = 1 if self.channels_last else math.prod(shape[2:])
        m = numel - (self.size - 1) * cs  # the flat range that holds every result
        self.squares, self.terms = squares[:, front : front + c], terms[:, back : back + c]
        self.s, self.p, self.w = s[:, :c], p[:, :c], scratch[:, :c]
        self.p_flat, self.scratch_flat = flat[3][:m], flat[4][:m]
        shifted = range(0, self.size * cs, cs)
        self.sum_squares = flat[2][:m], [flat[0][d : d + m] for d in shifted]  # -> s
        self.sum_terms = flat[4][:m], [flat[1][d : d + m] for d in shifted]  # -> w


def _window_sum(out: torch.Tensor, shifted: list[torch.Tensor]) -> torch.Tensor:
    if len(shifted) == 1:
        return out.copy_(shifted[0])
    torch.add(shifted[0], shifted[1], out=out)
    for t in shifted[2:]:
        out.add_(t)
    return out


def _neg_pow(s: torch.Tensor, beta: float, out: torch.Tensor, scratch: torch.Tensor):
    """s^-beta into out; beta 0.75 (the paper's) without a fractional pow."""
    if beta == 0.75:
        torch.rsqrt(s, out=out)
        return out.mul_(torch.sqrt(out, out=scratch))
    if beta == 0.5:
        return torch.rsqrt(s, out=out)
    return torch.pow(s, -beta, out=out)


def _scale_and_power(ws: _Workspace, x: torch.Tensor, alpha: float, beta: float) -> None:
    """s into ws.s and s^-beta into ws.p."""
    ws.bind(x)
    torch.addcmul(ws.edge, x, x, value=alpha, out=ws.squares)
    _neg_pow(_window_sum(*ws.sum_squares), beta, ws.p_flat, ws.scratch_flat)


class _LocalResponseNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float):
        if not (x.is_contiguous() or _is_channels_last(x)):
            x = x.contiguous()
        ctx.save_for_backward(x)
        ctx.constants = size, alpha, beta, k
        cdtype, ws = _compute_dtype(x.dtype), _Workspace(x, size, k)
        y = torch.empty_like(x)
        for index in _chunks(x):
            xc = x[index].to(cdtype)
            _scale_and_power(ws, xc, alpha, beta)
            torch.mul(xc, ws.p, out=y[index])
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        size, alpha, beta, k = ctx.constants
        cdtype, ws = _compute_dtype(x.dtype), _Workspace(x, size, k)
        dx = torch.empty_like(x)
        for index in _chunks(x):
            xc, gc = x[index].to(cdtype), g[index].to(cdtype)
            _scale_and_power(ws, xc, alpha, beta)
            gp = ws.p.mul_(gc)  # g s^-beta
            torch.mul(gp, xc, out=ws.terms).div_(ws.s)  # g b / s
            _window_sum(*ws.sum_terms)
            torch.addcmul(gp, ws.w, xc, value=-2.0 * alpha * beta, out=dx[index])
        return dx, None, None, None, None


class LocalResponseNorm(nn.Module):
    """The paper's LRN across channels; alpha is the paper's, not divided by `size`.

    Equals `nn.LocalResponseNorm(size, alpha * size, beta, k)` in value and gradient.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"expected (N, C, ...) input with at least 3 dims, got {x.dim()}")
        return _LocalResponseNorm.apply(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
