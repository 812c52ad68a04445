"""HcNet, the Heat Conduction Network (arXiv 2408.05901), in Flax NNX with NHWC tensors.

Each Hc-Ra block takes one explicit finite-difference step of the heat equation,
`x + k(x) * L(x)`, then a Refinement Approximation step, `x + RA(GroupNorm(x))`.
Three public forms of the operator L exist (see HEAT_OPERATORS); all are reproduced.

Default form: `mean8` for every variant. It is the isotropic FDM step the paper derives (the
neighbours' mean minus the centre), the only form for which k in [0, 1] gives a convex
combination (no new extrema), and with Table 1's depths it gives the paper's 28M params and
the count nearest its 4.1G MACs (4.154G; learned3 4.177G, learned5 4.217G). `learned5` is the
form the released training code trains (with depths 3,8,18,3); a config picks it by name.
"""
import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hcnet.errors import ConfigError
from hcnet.stencils import depthwise_conv, gelu, gelu_filter, mean8_laplacian, stencil_kernel

HEAT_OPERATORS = ("mean8", "learned3", "learned5")
K_MODES = ("input", "learned", "fixed")
CONV_INITS = ("torch_default", "trunc_normal")  # stem and downsampling convolutions
DEPTHWISE_IMPLS = ("auto", "shift", "conv")
DTYPES = ("float32", "bfloat16", "float16")  # compute; parameters stay float32

VARIANTS = {
    "mu": dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64)),  # tiny, for tests
    "T": dict(depths=(5, 5, 14, 5), dims=(64, 128, 320, 512)),
    "S": dict(depths=(6, 6, 18, 6), dims=(64, 192, 384, 768)),
    "B": dict(depths=(10, 10, 28, 10), dims=(96, 192, 384, 768)),
}


# ---------------------------------------------------------------- pure functions
def trunc_normal(key, shape, dtype=jnp.float32):
    """timm's trunc_normal_(std=0.02): bounds at +-2 absolute, i.e. +-100 std."""
    return 0.02 * jax.random.truncated_normal(key, -100.0, 100.0, shape, dtype)


def torch_default_bias(fan_in):
    """PyTorch's default conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv_out_size(size: int, stride: int = 2) -> int:
    """PyTorch's output size of a 3x3 convolution with padding 1."""
    return (size + 2 - 3) // stride + 1


def drop_path_rates(depths: Sequence[int], rate: float) -> list[float]:
    """Stochastic depth: linear from 0 at the first block to `rate` at the last."""
    return np.linspace(0.0, rate, sum(depths)).tolist()


# ---------------------------------------------------------------- layers
def group_norm(dim, dtype, param_dtype, rngs):
    """GroupNorm(1): normalises over (H, W, C) per example, per-channel affine, eps 1e-5."""
    return nnx.GroupNorm(dim, num_groups=1, epsilon=1e-5, use_fast_variance=False,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def conv3x3(cin, cout, *, use_bias, init, dtype, param_dtype, rngs):
    """3x3 stride-2 convolution with PyTorch's padding of 1.

    init "torch_default" is nn.Conv2d's own (kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)),
    bias the same): the reference never re-initialises its stem and downsampling convolutions.
    "trunc_normal" gives them the blocks' trunc_normal(0.02) and zero bias instead.
    """
    if init == "trunc_normal":
        inits = dict(kernel_init=trunc_normal, bias_init=nnx.initializers.zeros)
    else:
        inits = dict(kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                     bias_init=torch_default_bias(9 * cin))
    return nnx.Conv(cin, cout, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=use_bias,
                    dtype=dtype, param_dtype=param_dtype, rngs=rngs, **inits)


def linear(din, dout, *, use_bias=True, dtype, param_dtype, rngs):
    return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=trunc_normal, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)


class HeatConduction(nnx.Module):
    """The increment k(x) * L(x) of one explicit heat-equation step."""

    def __init__(self, dim, *, heat_operator, k_mode, k_value, dtype, param_dtype,
                 depthwise_impl, rngs: nnx.Rngs):
        self.heat_operator, self.k_mode, self.k_value = heat_operator, k_mode, k_value
        self.depthwise_impl = depthwise_impl
        if heat_operator != "mean8":
            size = 3 if heat_operator == "learned3" else 5
            self.stencil = nnx.Param(trunc_normal(rngs.params(), (size, size, 1, dim), param_dtype))
        if k_mode == "input":
            self.gate = linear(dim, dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
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

    def __call__(self, x):
        return self.conductivity(x) * self.laplacian(x)


class RefinementApproximation(nnx.Module):
    """RA(x) = fc2(DWConv3x3(GELU(fc1(x)))), the 'filter' being Table 6's ablation."""

    def __init__(self, dim, hidden, *, ra_filter, dropout, dtype, param_dtype, depthwise_impl,
                 rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.filter = nnx.Param(trunc_normal(rngs.params(), (3, 3, 1, hidden), param_dtype)) if ra_filter else None
        self.fc2 = linear(hidden, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.depthwise_impl = depthwise_impl

    def __call__(self, x):
        # the 1x1 convolutions as (B*H*W, C) matmuls: the weight gradients are then plain 2-D dots
        # (on 4-D maps XLA:CPU transposes each gradient map before its weight-gradient dot)
        b, h, w, c = x.shape
        y = self.fc1(x.reshape(b * h * w, c)).reshape(b, h, w, -1)
        kernel = self.filter[...].astype(y.dtype) if self.filter is not None else None
        y = self.drop(gelu_filter(y, kernel, self.depthwise_impl))
        return self.drop(self.fc2(y.reshape(b * h * w, -1))).reshape(b, h, w, c)


class HcRaBlock(nnx.Module):
    """x += k L(x); x += DropPath(RA(GroupNorm(x))). mean8 also drops the heat branch."""

    def __init__(self, dim, *, heat_operator, k_mode, k_value, ra_filter, mlp_ratio, drop_path,
                 dropout, dtype, param_dtype, depthwise_impl, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, depthwise_impl=depthwise_impl, rngs=rngs)
        self.heat = HeatConduction(dim, heat_operator=heat_operator, k_mode=k_mode, k_value=k_value, **kw)
        self.norm = group_norm(dim, dtype, param_dtype, rngs)
        self.ra = RefinementApproximation(dim, int(dim * mlp_ratio), ra_filter=ra_filter,
                                          dropout=dropout, **kw)
        self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs)  # per example
        self.drop_heat = heat_operator == "mean8"

    def __call__(self, x):
        return self.residuals(x, self.drop_path)

    def residuals(self, x, drop):
        """The block with `drop` (a map -> map) as its drop path."""
        dx = self.heat(x)
        x = x + (drop(dx) if self.drop_heat else dx)
        return x + drop(self.ra(self.norm(x)))


def drop_path(key, x, rate):
    """nnx.Dropout(rate, broadcast_dims=(1, 2, 3)) with a traced rate: each example's map is zeroed with
    probability `rate`, the rest scaled by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate).astype(x.dtype), jnp.zeros((), x.dtype))


class Downsample(nnx.Module):
    """conv3x3 stride 2 without bias, then GroupNorm(1)."""

    def __init__(self, cin, cout, *, conv_init, dtype, param_dtype, rngs: nnx.Rngs):
        self.conv = conv3x3(cin, cout, use_bias=False, init=conv_init, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
        self.norm = group_norm(cout, dtype, param_dtype, rngs)

    def __call__(self, x):
        return self.norm(self.conv(x))


class Stage(nnx.Module):
    """depth Hc-Ra blocks at one width, then (except the last stage) a Downsample."""

    def __init__(self, blocks: list[HcRaBlock], downsample: Downsample | None, remat: bool, scan: bool = False):
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
        """The blocks as one jax.lax.scan over their stacked parameters: the compiler sees one block body
        per stage instead of `depth` copies. The parameters stay one tree per block (checkpoints, PyTorch
        conversion); each step stacks them (and the gradient unstacks). The drop path rates are a scanned
        array, and each block draws its two masks from keys split off one draw of the dropout stream, so
        in training the masks differ from the unrolled loop's (the same rates; evaluation is the same)."""
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
        if self.remat:
            body = jax.checkpoint(body)
        return jax.lax.scan(body, x, (params, rates, keys))[0]


class Stem(nnx.Module):
    """conv3x3 s2 (C/2) -> GroupNorm -> GELU -> conv3x3 s2 (C) -> GroupNorm: stride 4."""

    def __init__(self, cin, dim, *, conv_init, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=True, init=conv_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = conv3x3(cin, dim // 2, **kw)
        self.norm1 = group_norm(dim // 2, dtype, param_dtype, rngs)
        self.conv2 = conv3x3(dim // 2, dim, **kw)
        self.norm2 = group_norm(dim, dtype, param_dtype, rngs)

    def __call__(self, x):
        x = gelu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))


# ---------------------------------------------------------------- network
class HcNet(nnx.Module):
    """The network: stem, four stages, GroupNorm, global mean, linear head (B, H, W, 3) -> logits."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int], *, num_classes: int = 1000,
                 in_chans: int = 3, heat_operator: str = "mean8", k_mode: str = "input",
                 k_value: float = 0.5, ra_filter: bool = True, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, dropout: float = 0.0, dtype=jnp.float32,
                 param_dtype=jnp.float32, remat: bool = False, scan_blocks: bool = False,
                 depthwise_impl: str = "auto",
                 conv_init: str = "torch_default", rngs: nnx.Rngs):
        check_args(depths, dims, heat_operator=heat_operator, k_mode=k_mode, k_value=k_value, conv_init=conv_init,
                   depthwise_impl=depthwise_impl, drop_path=drop_path, dropout=dropout, dtype=dtype,
                   scan_blocks=scan_blocks)
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stem = Stem(in_chans, dims[0], conv_init=conv_init, **kw)
        # the reference drops out after the stem in its mean8 and learned3 files only
        self.stem_drop = nnx.Dropout(dropout if heat_operator != "learned5" else 0.0, rngs=rngs)
        rates, stages = iter(drop_path_rates(depths, drop_path)), []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            blocks = [HcRaBlock(dim, heat_operator=heat_operator, k_mode=k_mode, k_value=k_value,
                                ra_filter=ra_filter, mlp_ratio=mlp_ratio, drop_path=next(rates),
                                dropout=dropout, depthwise_impl=depthwise_impl, **kw)
                      for _ in range(depth)]
            down = Downsample(dim, dims[i + 1], conv_init=conv_init, **kw) if i + 1 < len(dims) else None
            stages.append(Stage(blocks, down, remat, scan_blocks))
        self.stages = nnx.List(stages)
        self.norm = group_norm(dims[-1], dtype, param_dtype, rngs)
        self.head = linear(dims[-1], num_classes, **kw) if num_classes > 0 else None

    def features(self, x) -> list[jax.Array]:
        """The four stage outputs, at strides 4, 8, 16 and 32. x (B, H, W, C_in)."""
        return self.stage_outputs(self.stem_drop(self.stem(jnp.asarray(x, self.dtype))))

    def stage_outputs(self, x, first: int = 0) -> list[jax.Array]:
        """The outputs of stages first, first + 1, ..., x being stage `first`'s input."""
        outs = []
        for stage in self.stages[first:]:
            feat, x = stage(x)
            outs.append(feat)
        return outs

    def classify(self, last):
        """Logits (or, with num_classes=0, pooled features) from the last stage's output."""
        z = self.norm(last).mean(axis=(1, 2))
        return (self.head(z) if self.head is not None else z).astype(jnp.float32)

    def logits_from_stage(self, i: int, feat):
        """The network's output as a function of stage i's output (Grad-CAM differentiates it)."""
        if i + 1 < len(self.stages):
            feat = self.stage_outputs(self.stages[i].downsample(feat), i + 1)[-1]
        return self.classify(feat)

    def __call__(self, x):
        return self.classify(self.features(x)[-1])


def check_args(depths, dims, *, heat_operator="mean8", k_mode="input", k_value=0.5, conv_init="torch_default",
               depthwise_impl="auto", drop_path=0.0, dropout=0.0, dtype=jnp.float32, scan_blocks=False, **_) -> None:
    """Stops on a bad model argument with one line naming it, its value and what is accepted."""
    choices = dict(heat_operator=(heat_operator, HEAT_OPERATORS), k_mode=(k_mode, K_MODES),
                   conv_init=(conv_init, CONV_INITS), depthwise_impl=(depthwise_impl, DEPTHWISE_IMPLS),
                   dtype=(jnp.dtype(dtype).name if _is_dtype(dtype) else dtype, DTYPES))
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"model.{name}={value!r}: one of {', '.join(allowed)}")
    if len(depths) != 4 or len(dims) != 4 or min(depths) < 1 or min(dims) < 2:
        raise ConfigError(f"model.depths={tuple(depths)} and model.dims={tuple(dims)}: four positive depths "
                          "and four widths >= 2")
    if dims[0] % 2:
        raise ConfigError(f"model.dims[0]={dims[0]}: must be even (the stem's first conv has dims[0] // 2)")
    for name, rate in (("drop_path", drop_path), ("dropout", dropout)):
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"model.{name}={rate}: must be in [0, 1)")
    if scan_blocks and dropout > 0:
        raise ConfigError(f"model.scan_blocks=True with model.dropout={dropout}: a scanned stage draws drop path "
                          "masks only; set dropout=0 (every shipped config does) or scan_blocks=False")
    if k_mode == "fixed" and not 0.0 <= k_value <= 1.0:
        raise ConfigError(f"model.k_value={k_value}: a fixed conductivity must be in [0, 1] (the stable range "
                          "of the explicit step)")


def _is_dtype(value) -> bool:
    try:
        jnp.dtype(value)
        return True
    except TypeError:
        return False


def model_spec(variant: str | None = None, **overrides) -> dict:
    """The full keyword arguments of HcNet for a variant name, with overrides (depths/dims too)."""
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"model.variant={variant!r}: one of {', '.join(VARIANTS)} (or give depths and dims, four each)")
    spec = dict(VARIANTS[variant]) if variant is not None else {}
    spec.update({k: v for k, v in overrides.items() if v is not None})
    if "depths" not in spec or "dims" not in spec:
        raise ConfigError("model: give a variant (one of " + ", ".join(VARIANTS) + ") or both depths and dims")
    spec["depths"], spec["dims"] = tuple(spec["depths"]), tuple(spec["dims"])
    return spec


def build(spec: dict, *, rngs: nnx.Rngs) -> nnx.Module:
    """The network of a spec: HcNet from its full keyword arguments (as `model_spec` returns them), or, when
    the spec has a `decoder` entry, that segmentation network on an HcNet backbone (hcnet.upernet)."""
    spec = dict(spec)
    decoder = spec.pop("decoder", None)
    if decoder is not None:
        from hcnet import upernet
        return upernet.from_spec(spec, decoder, rngs=rngs)
    return HcNet(spec.pop("depths"), spec.pop("dims"), rngs=rngs, **spec)


def create_model(variant: str | None = "T", *, rngs: nnx.Rngs, **overrides) -> HcNet:
    """HcNet for a variant name ('mu', 'T', 'S', 'B'); depths, dims and any HcNet argument override."""
    return build(model_spec(variant, **overrides), rngs=rngs)


def abstract(spec: dict, build_fn=None) -> nnx.Module:
    """The network `build_fn(spec)` (HcNet's by default) with shapes only: no parameter memory, no random draws."""
    return nnx.eval_shape(lambda: (build_fn or build)(spec, rngs=nnx.Rngs(0)))


def spec_json(spec: dict) -> dict:
    """A spec as JSON can hold it (dtypes by name, tuples as lists); `build` takes it back as it is."""
    return {k: (jnp.dtype(v).name if k.endswith("dtype") else list(v) if isinstance(v, tuple) else v)
            for k, v in spec.items()}


WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)  # what a checkpoint holds of a network


def eval_view(module: nnx.Module) -> nnx.Module:
    """The network in evaluation mode: no dropout or drop path, BatchNorm (if any) on its running statistics."""
    batch_norm = any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(module))
    return nnx.view(module, deterministic=True, **({"use_running_average": True} if batch_norm else {}))


def running_statistics(module: nnx.Module) -> dict:
    """The BatchNorm running statistics of a module as a pure dict ({} when it has none)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A network without its parameters: the graph and the template of its dropout / drop-path RNG
    streams. Hashable, so a jitted step can take it as a static argument."""
    graphdef: nnx.GraphDef
    rngs: object  # abstract RNG-stream state (keys and counts)

    @classmethod
    def from_spec(cls, spec: dict, build_fn=None) -> tuple["ModelDef", dict]:
        """(definition, abstract weights as a pure dict) of the network `build_fn(spec)` (HcNet's by default).

        The weights are the parameters and, in a network with BatchNorm (UperNet's heads), its running
        statistics beside them (`mean`, `var`): everything a trained network needs, in one tree."""
        graphdef, params, rngs = nnx.split(abstract(spec, build_fn), WEIGHTS, ...)
        return cls(graphdef, rngs), nnx.to_pure_dict(params)

    def __hash__(self):
        return hash(self.graphdef)

    def bind(self, params: dict, key=None) -> nnx.Module:
        """The network with `params`; its RNG streams start from `key` (None: a fixed key, for eval mode)."""
        leaves, tree = jax.tree.flatten(self.rngs)
        key = jax.random.key(0) if key is None else key
        fresh = [jax.random.fold_in(key, i) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                 else jnp.zeros(x.shape, x.dtype) for i, x in enumerate(leaves)]
        return nnx.merge(self.graphdef, params, jax.tree.unflatten(tree, fresh))

