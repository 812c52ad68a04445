"""HcNet's parts, in Flax NNX with NHWC tensors: initialisers, the heat conduction layer, the
Refinement Approximation, the Hc-Ra block and its drop path, the stem, downsampling and a stage of
blocks (run unrolled, or as one jax.lax.scan). hcnet.model assembles them into the network."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hcnet.stencils import depthwise_conv, gelu, gelu_filter, mean8_laplacian, stencil_kernel


# ---------------------------------------------------------------- pure functions
def trunc_normal(key, shape, dtype=jnp.float32):
    """timm's trunc_normal_(std=0.02): bounds at +-2 absolute, i.e. +-100 std."""
    return 0.02 * jax.random.truncated_normal(key, -100.0, 100.0, shape, dtype)


def torch_default_bias(fan_in):
    """PyTorch's default conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


def conv_out_size(size: int, stride: int = 2) -> int:
    """PyTorch's output size of a 3x3 convolution with padding 1."""
    return (size + 2 - 3) // stride + 1


def drop_path_rates(depths: Sequence[int], rate: float) -> list[float]:
    """Stochastic depth: linear from 0 at the first block to `rate` at the last."""
    return np.linspace(0.0, rate, sum(depths)).tolist()


# ---------------------------------------------------------------- layers
def group_norm(dim, dtype, param_dtype, rngs):
    """GroupNorm(1): normalises over (H, W, C) per example, per-channel affine, eps 1e-5."""
    return nnx.GroupNorm(
        dim,
        num_groups=1,
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def conv3x3(cin, cout, *, use_bias, init, dtype, param_dtype, rngs):
    """3x3 stride-2 convolution with PyTorch's padding of 1.

    init "torch_default" is nn.Conv2d's own (kaiming-uniform with a = sqrt(5), i.e.
    U(+-1/sqrt(fan_in)), bias the same): the reference never re-initialises its stem and
    downsampling convolutions. "trunc_normal" gives them the blocks' trunc_normal(0.02) and zero
    bias instead.
    """
    if init == "trunc_normal":
        inits = dict(kernel_init=trunc_normal, bias_init=nnx.initializers.zeros)
    else:
        inits = dict(
            kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            bias_init=torch_default_bias(9 * cin),
        )
    return nnx.Conv(
        cin,
        cout,
        (3, 3),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        **inits,
    )


def linear(din, dout, *, use_bias=True, dtype, param_dtype, rngs):
    return nnx.Linear(
        din,
        dout,
        use_bias=use_bias,
        kernel_init=trunc_normal,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class HeatConduction(nnx.Module):
    """The increment k(x) * L(x) of one explicit heat-equation step."""

    def __init__(
        self,
        dim,
        *,
        heat_operator,
        k_mode,
        k_value,
        dtype,
        param_dtype,
        depthwise_impl,
        rngs: nnx.Rngs,
    ):
        self.heat_operator, self.k_mode, self.k_value = heat_operator, k_mode, k_value
        self.depthwise_impl = depthwise_impl
        if heat_operator != "mean8":
            size = 3 if heat_operator == "learned3" else 5
            self.stencil = nnx.Param(trunc_normal(rngs.params(), (size, size, 1, dim), param_dtype))
        if k_mode == "input":
            self.gate = linear(
                dim, dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )
        elif k_mode == "learned":
            self.k = nnx.Param(jnp.full((), k_value, param_dtype))

    def conductivity(self, x):
        """k: (B, 1, 1, C) for the input-dependent mode, a scalar otherwise."""
        if self.k_mode == "input":
            return jax.nn.sigmoid(self.gate(x.mean(axis=(1, 2), keepdims=True)))
        if self.k_mode == "learned":
            return self.k[...].astype(x.dtype)
        return jnp.asarray(self.k_value, x.dtype)

    def laplacian(self, x):
        if self.heat_operator == "mean8":
            return mean8_laplacian(x)
        kernel = stencil_kernel(self.stencil[...], self.heat_operator).astype(x.dtype)
        return depthwise_conv(x, kernel, self.depthwise_impl)

    @jax.named_scope("heat")  # what hcnet.measure.hlo groups the compiled step's bytes by
    def __call__(self, x):
        return self.conductivity(x) * self.laplacian(x)


def pointwise(layer: nnx.Linear, x):
    """A 1x1 convolution (a Linear over the channels) of an NHWC map. Elsewhere than on a TPU as a
    (B*H*W, C) matmul: the weight gradient is then a plain 2-D dot (on a 4-D map XLA:CPU transposes
    each gradient map before it). On a TPU on the map itself: there the reshape to rows is a copy
    of the map whenever W is not a multiple of the 8-row tile (28, 14 and 7 at 224), and the dot
    over the channels is the same (BENCHMARKS.md, "Where the bytes go")."""

    def rows(x):
        b, h, w, c = x.shape
        return layer(x.reshape(b * h * w, c)).reshape(b, h, w, -1)

    return jax.lax.platform_dependent(x, tpu=layer, default=rows)


class RefinementApproximation(nnx.Module):
    """RA(x) = fc2(DWConv3x3(GELU(fc1(x)))), the 'filter' being Table 6's ablation."""

    def __init__(
        self, dim, hidden, *, ra_filter, dropout, dtype, param_dtype, depthwise_impl, rngs: nnx.Rngs
    ):
        self.fc1 = linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.filter = (
            nnx.Param(trunc_normal(rngs.params(), (3, 3, 1, hidden), param_dtype))
            if ra_filter
            else None
        )
        self.fc2 = linear(hidden, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.depthwise_impl = depthwise_impl

    def __call__(self, x):
        with jax.named_scope("ra_mlp"):
            y = pointwise(self.fc1, x)
        with jax.named_scope("ra_filter"):
            kernel = self.filter[...].astype(y.dtype) if self.filter is not None else None
            y = self.drop(gelu_filter(y, kernel, self.depthwise_impl))
        with jax.named_scope("ra_mlp"):
            return self.drop(pointwise(self.fc2, y))


class HcRaBlock(nnx.Module):
    """x += k L(x); x += DropPath(RA(GroupNorm(x))). mean8 also drops the heat branch."""

    def __init__(
        self,
        dim,
        *,
        heat_operator,
        k_mode,
        k_value,
        ra_filter,
        mlp_ratio,
        drop_path,
        dropout,
        dtype,
        param_dtype,
        depthwise_impl,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, depthwise_impl=depthwise_impl, rngs=rngs)
        self.heat = HeatConduction(
            dim, heat_operator=heat_operator, k_mode=k_mode, k_value=k_value, **kw
        )
        self.norm = group_norm(dim, dtype, param_dtype, rngs)
        self.ra = RefinementApproximation(
            dim, int(dim * mlp_ratio), ra_filter=ra_filter, dropout=dropout, **kw
        )
        self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs)  # per example
        self.drop_heat = heat_operator == "mean8"

    def __call__(self, x):
        return self.residuals(x, self.drop_path)

    def residuals(self, x, drop):
        """The block with `drop` (a map -> map) as its drop path."""
        dx = self.heat(x)
        x = x + (drop(dx) if self.drop_heat else dx)
        with jax.named_scope("groupnorm"):
            y = self.norm(x)
        return x + drop(self.ra(y))


def drop_path(key, x, rate):
    """nnx.Dropout(rate, broadcast_dims=(1, 2, 3)) with a traced rate: each example's map is zeroed
    with probability `rate`, the rest scaled by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate).astype(x.dtype), jnp.zeros((), x.dtype))


class Downsample(nnx.Module):
    """conv3x3 stride 2 without bias, then GroupNorm(1)."""

    def __init__(self, cin, cout, *, conv_init, dtype, param_dtype, rngs: nnx.Rngs):
        self.conv = conv3x3(
            cin,
            cout,
            use_bias=False,
            init=conv_init,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.norm = group_norm(cout, dtype, param_dtype, rngs)

    @jax.named_scope("downsample")
    def __call__(self, x):
        return self.norm(self.conv(x))


class Stage(nnx.Module):
    """depth Hc-Ra blocks at one width, then (except the last stage) a Downsample. `remat`
    recomputes each block in the backward pass; scanned blocks always are."""

    def __init__(
        self,
        blocks: list[HcRaBlock],
        downsample: Downsample | None,
        remat: bool,
        *,
        scan: bool = False,
    ):
        self.blocks = nnx.List(blocks)
        self.downsample = downsample
        self.remat = remat
        self.scan = scan

    def __call__(self, x):
        """Returns (the stage's features, the input of the next stage)."""
        if self.scan and len(self.blocks) > 1:
            x = self._scanned(x)
        else:
            for block in self.blocks:
                x = nnx.remat(lambda b, y: b(y))(block, x) if self.remat else block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)

    def _scanned(self, x):
        """The blocks as one jax.lax.scan over their stacked parameters: the compiler sees one block
        body per stage instead of `depth` copies. The parameters stay one tree per block
        (checkpoints, PyTorch conversion); each step stacks them (and the gradient unstacks). The
        drop path rates are a scanned array, and each block draws its two masks from keys split off
        one draw of the dropout stream, so in training the masks differ from the unrolled loop's
        (the same rates; evaluation is the same)."""
        blocks = list(self.blocks)
        graphdef, _, rest = nnx.split(blocks[0], nnx.Param, ...)
        params = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(b, nnx.Param) for b in blocks])
        first = blocks[0].drop_path
        rates = jnp.asarray([b.drop_path.rate for b in blocks], jnp.float32)
        train = not first.deterministic and any(b.drop_path.rate > 0 for b in blocks)
        keys = jax.random.split(first.rngs() if train else jax.random.key(0), (len(blocks), 2))

        def body(y, inputs):
            p, rate, (k_heat, k_ra) = inputs
            block = nnx.merge(graphdef, p, rest)
            if train:
                ks = iter((k_heat, k_ra) if block.drop_heat else (k_ra,))
                return block.residuals(y, lambda m: drop_path(next(ks), m, rate)), None
            return block.residuals(y, lambda m: m), None

        # the backward pass keeps each block's input alone and recomputes the block from it, with
        # or without model.remat: a TPU step then moves the fewest bytes (keeping the matmuls'
        # outputs instead moved 14% more per image for 13% fewer flops) and holds the least
        # memory of the forms compared (BENCHMARKS.md, "Where the bytes go", "Compile time")
        return jax.lax.scan(jax.checkpoint(body), x, (params, rates, keys))[0]


class Stem(nnx.Module):
    """conv3x3 s2 (C/2) -> GroupNorm -> GELU -> conv3x3 s2 (C) -> GroupNorm: stride 4."""

    def __init__(self, cin, dim, *, conv_init, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=True, init=conv_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = conv3x3(cin, dim // 2, **kw)
        self.norm1 = group_norm(dim // 2, dtype, param_dtype, rngs)
        self.conv2 = conv3x3(dim // 2, dim, **kw)
        self.norm2 = group_norm(dim, dtype, param_dtype, rngs)

    @jax.named_scope("stem")
    def __call__(self, x):
        x = gelu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))
