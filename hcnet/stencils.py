"""The heat operator's stencils and the Refinement Approximation's filter, as pure functions on NHWC
maps.

Each is the cheapest XLA program found for it (BENCHMARKS.md, "The operator forms as XLA programs"):
nine shifted multiply-adds instead of a grouped convolution, compile-time constants for mean8's
neighbour counts, and a hand-written backward pass for the depthwise filter and GELU that keeps two
maps, not the nine shifted copies autodiff would keep.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def neighbour_count(h: int, w: int) -> np.ndarray:
    """In-image neighbours of each pixel in its 3x3 window: 8 inside, 5 on edges, 3 at corners."""
    rows = np.minimum(np.arange(h) + 1, h - 1) - np.maximum(np.arange(h) - 1, 0) + 1
    cols = np.minimum(np.arange(w) + 1, w - 1) - np.maximum(np.arange(w) - 1, 0) + 1
    return (rows[:, None] * cols[None, :] - 1).astype(np.float32)[..., None]  # (H, W, 1)


def depthwise_conv(x, kernel, impl: str = "auto"):
    """Zero-padded 'same' depthwise cross-correlation. x (B, H, W, C), kernel (k, k, 1, C), k odd.

    `shift` sums k*k shifted multiply-adds, with a hand-written backward pass that keeps only x and
    the kernel (autodiff would save the k*k shifted copies of x); `conv` is XLA's grouped
    convolution; `auto` is `conv` on TPU and `shift` elsewhere (see `per_platform`).
    """
    if impl == "auto":
        return per_platform(depthwise_conv, x, kernel)
    if impl == "conv":
        kh, kw = kernel.shape[:2]
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (1, 1),
            ((kh // 2, kh // 2), (kw // 2, kw // 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    return _depthwise(x, kernel)


def per_platform(f, *args):
    """f(*args, impl=...) with the implementation chosen for the platform the program is lowered
    for: XLA's grouped convolution and autodiff on TPUs and NVIDIA GPUs, the shifted multiply-adds
    with their hand-written backward pass elsewhere (the CPU). Each is the smaller or faster program
    on its platform, and on an NVIDIA GPU the shifted form's kernel-gradient reduction is one that
    ptxas rejects (the compiled figures: BENCHMARKS.md, "Per-platform choices")."""

    def conv(*a):
        return f(*a, impl="conv")

    def shift(*a):
        return f(*a, impl="shift")

    return jax.lax.platform_dependent(*args, tpu=conv, cuda=conv, default=shift)


def _pad_same(x, kh: int, kw: int):
    """Zero padding of (kh // 2, kw // 2) on each side of the map: 'same' for odd kernel sizes."""
    return jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))


def _shifted_sum(x, kernel):
    """sum_ij pad(x)[i:i+H, j:j+W] * kernel[i, j]: the forward pass, and (with the kernel flipped)
    the gradient with respect to x."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1:3]
    xp = _pad_same(x, kh, kw)
    taps = [xp[:, i : i + h, j : j + w, :] * kernel[i, j, 0] for i in range(kh) for j in range(kw)]
    return sum(taps[1:], taps[0])


def _kernel_grad(x, g, kernel):
    """d/dkernel of sum(g * depthwise(x, kernel)), in fp32: tap (i, j) is sum(x * pad(g) shifted by
    (k-1-i, k-1-j)). Shifting g rather than x makes every product depend on the incoming gradient,
    so XLA cannot compute (and hold) them during the forward pass. One variadic reduction over the
    batch forms all the taps' products together (on the CPU 2x faster than one reduction per tap),
    then each tap's (H, W, C) partial sum is summed over the map."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1:3]
    x = x.astype(jnp.float32)
    gp = _pad_same(g.astype(jnp.float32), kh, kw)
    products = tuple(
        x * gp[:, kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + w, :]
        for i in range(kh)
        for j in range(kw)
    )
    partial = jax.lax.reduce(
        products,
        (np.float32(0),) * len(products),
        lambda a, b: tuple(u + v for u, v in zip(a, b)),
        (0,),
    )
    return (
        jnp.stack([p.sum(axis=(0, 1)) for p in partial]).reshape(kernel.shape).astype(kernel.dtype)
    )


@jax.custom_vjp
def _depthwise(x, kernel):
    return _shifted_sum(x, kernel)


def _depthwise_fwd(x, kernel):
    return _shifted_sum(x, kernel), (x, kernel)


def _depthwise_bwd(res, g):
    x, kernel = res
    return _shifted_sum(g, kernel[::-1, ::-1]), _kernel_grad(x, g, kernel)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def gelu_filter(h, kernel, impl: str = "auto"):
    """DWConv(GELU(h)) (exact GELU), or GELU(h) when kernel is None: the Refinement Approximation's
    middle. With `shift` the backward pass keeps h and GELU(h) (autodiff would also keep the erfc
    and exp terms and the k*k shifted copies), and every map it computes depends on the incoming
    gradient. `conv`: GELU, XLA's grouped convolution and autodiff; `auto`: chosen per platform
    (`per_platform`)."""
    if impl == "auto":
        if kernel is None:
            return per_platform(lambda a, impl: gelu_filter(a, None, impl), h)
        return per_platform(gelu_filter, h, kernel)
    if impl == "conv":
        x = gelu(h)
        return depthwise_conv(x, kernel, impl) if kernel is not None else x
    return _gelu_filter(h, kernel)


def gelu(x):
    """The exact GELU, x * Phi(x), written with erf as PyTorch's nn.GELU is: XLA keeps erf one op
    (jax.nn.gelu's erfc is expanded into a polynomial that XLA:CPU copies into every consumer)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1 / math.sqrt(2))))


def _gelu_grad(h):
    """d/dh of h * Phi(h): Phi(h) + h * phi(h)."""
    return 0.5 * (1.0 + jax.lax.erf(h * (1 / math.sqrt(2)))) + h * jnp.exp(-0.5 * h * h) * (
        1 / math.sqrt(2 * math.pi)
    )


@jax.custom_vjp
def _gelu_filter(h, kernel):
    return _gelu_filter_fwd(h, kernel)[0]


def _gelu_filter_fwd(h, kernel):
    x = gelu(h)
    if kernel is None:
        return x, (h, None, None)
    return _shifted_sum(x, kernel), (h, x, kernel)


def _gelu_filter_bwd(res, g):
    h, x, kernel = res
    # keeps XLA from merging the erf below with the forward pass's, which would hold that map from
    # the forward pass to the backward (more temporaries: BENCHMARKS.md)
    h, x, g = jax.lax.optimization_barrier((h, x, g))
    if kernel is None:
        return g * _gelu_grad(h), None
    dx = _shifted_sum(g, kernel[::-1, ::-1])
    return dx * _gelu_grad(h), _kernel_grad(x, g, kernel)


_gelu_filter.defvjp(_gelu_filter_fwd, _gelu_filter_bwd)


def box_sum3(x):
    """Sum over each zero-padded 3x3 window. x (B, H, W, C)."""
    h, w = x.shape[1:3]
    xp = _pad_same(x, 3, 3)
    rows = xp[:, 0:h] + xp[:, 1 : h + 1] + xp[:, 2 : h + 2]
    return rows[:, :, 0:w] + rows[:, :, 1 : w + 1] + rows[:, :, 2 : w + 2]


def mean8_laplacian(x):
    """Mean of the in-image 3x3 neighbours minus the centre; 0 on a 1x1 map. x (B, H, W, C).

    (The reference divides 0 by 0 there, i.e. at the last stage of a 32x32 input.)
    """
    count = neighbour_count(*x.shape[1:3])  # a compile-time constant
    return (box_sum3(x) - jnp.asarray(count + 1, x.dtype) * x) / jnp.asarray(
        np.maximum(count, 1), x.dtype
    )


def stencil_kernel(w, heat_operator: str):
    """Folds a learned form's centre terms into one depthwise kernel, so L(x) = dwconv(x, kernel).

    learned5: conv_w(x) - sum(w) x.   learned3: conv_w(x) - w_centre x - 2 sum(w) x.
    """
    c = w.shape[0] // 2
    total = w.sum(axis=(0, 1))  # (1, C)
    centre = -total if heat_operator == "learned5" else -(w[c, c] + 2.0 * total)
    return w.at[c, c].add(centre)
