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

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hcnet.errors import ConfigError
from hcnet.layers import Downsample, HcRaBlock, Stage, Stem, drop_path_rates, group_norm, linear

HEAT_OPERATORS = ("mean8", "learned3", "learned5")
K_MODES = ("input", "learned", "fixed")
CONV_INITS = ("torch_default", "trunc_normal")  # stem and downsampling convolutions
DEPTHWISE_IMPLS = ("auto", "shift", "conv")
# a stage's blocks: one jax.lax.scan over their stacked parameters (one block for the compiler to
# compile), or a Python loop (the blocks unrolled); "auto" is resolved by `hcnet.nets.for_platform`
# for the devices a program is compiled for, and a network built without that resolution unrolls
BLOCK_LOOPS = ("auto", "scan", "unroll")
DTYPES = ("float32", "bfloat16", "float16")  # compute; parameters stay float32

VARIANTS = {
    "mu": dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64)),  # tiny, for tests
    "T": dict(depths=(5, 5, 14, 5), dims=(64, 128, 320, 512)),
    "S": dict(depths=(6, 6, 18, 6), dims=(64, 192, 384, 768)),
    "B": dict(depths=(10, 10, 28, 10), dims=(96, 192, 384, 768)),
}


# ---------------------------------------------------------------- network
class HcNet(nnx.Module):
    """The network: stem, four stages, GroupNorm, global mean, linear head (B, H, W, 3) ->
    logits."""

    def __init__(
        self,
        depths: Sequence[int],
        dims: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        heat_operator: str = "mean8",
        k_mode: str = "input",
        k_value: float = 0.5,
        ra_filter: bool = True,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        block_loop: str = "auto",
        depthwise_impl: str = "auto",
        conv_init: str = "torch_default",
        rngs: nnx.Rngs,
    ):
        check_args(
            depths,
            dims,
            heat_operator=heat_operator,
            k_mode=k_mode,
            k_value=k_value,
            conv_init=conv_init,
            depthwise_impl=depthwise_impl,
            drop_path=drop_path,
            dropout=dropout,
            dtype=dtype,
            block_loop=block_loop,
        )
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stem = Stem(in_chans, dims[0], conv_init=conv_init, **kw)
        # the reference drops out after the stem in its mean8 and learned3 files only
        self.stem_drop = nnx.Dropout(dropout if heat_operator != "learned5" else 0.0, rngs=rngs)
        rates, stages = iter(drop_path_rates(depths, drop_path)), []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            blocks = [
                HcRaBlock(
                    dim,
                    heat_operator=heat_operator,
                    k_mode=k_mode,
                    k_value=k_value,
                    ra_filter=ra_filter,
                    mlp_ratio=mlp_ratio,
                    drop_path=next(rates),
                    dropout=dropout,
                    depthwise_impl=depthwise_impl,
                    **kw,
                )
                for _ in range(depth)
            ]
            down = (
                Downsample(dim, dims[i + 1], conv_init=conv_init, **kw)
                if i + 1 < len(dims)
                else None
            )
            stages.append(Stage(blocks, down, remat, scan=block_loop == "scan"))
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

    @jax.named_scope("head")
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


def check_args(
    depths,
    dims,
    *,
    heat_operator="mean8",
    k_mode="input",
    k_value=0.5,
    conv_init="torch_default",
    depthwise_impl="auto",
    drop_path=0.0,
    dropout=0.0,
    dtype=jnp.float32,
    block_loop="auto",
    **_,
) -> None:
    """Stops on a bad model argument with one line naming it, its value and what is accepted."""
    choices = dict(
        heat_operator=(heat_operator, HEAT_OPERATORS),
        k_mode=(k_mode, K_MODES),
        conv_init=(conv_init, CONV_INITS),
        depthwise_impl=(depthwise_impl, DEPTHWISE_IMPLS),
        block_loop=(block_loop, BLOCK_LOOPS),
        dtype=(jnp.dtype(dtype).name if _is_dtype(dtype) else dtype, DTYPES),
    )
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"model.{name}={value!r}: one of {', '.join(allowed)}")
    if len(depths) != 4 or len(dims) != 4 or min(depths) < 1 or min(dims) < 2:
        raise ConfigError(
            f"model.depths={tuple(depths)} and model.dims={tuple(dims)}: four positive depths "
            "and four widths >= 2"
        )
    if dims[0] % 2:
        raise ConfigError(
            f"model.dims[0]={dims[0]}: must be even (the stem's first conv has dims[0] // 2)"
        )
    for name, rate in (("drop_path", drop_path), ("dropout", dropout)):
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"model.{name}={rate}: must be in [0, 1)")
    if block_loop == "scan" and dropout > 0:
        raise ConfigError(
            f"model.block_loop='scan' with model.dropout={dropout}: a scanned stage draws drop "
            "path "
            "masks only; set dropout=0 (every shipped config does) or block_loop='unroll' or 'auto'"
        )
    if k_mode == "fixed" and not 0.0 <= k_value <= 1.0:
        raise ConfigError(
            f"model.k_value={k_value}: a fixed conductivity must be in [0, 1] (the stable range "
            "of the explicit step)"
        )


def _is_dtype(value) -> bool:
    try:
        jnp.dtype(value)
        return True
    except TypeError:
        return False


def model_spec(variant: str | None = None, **overrides) -> dict:
    """The full keyword arguments of HcNet for a variant name, with overrides (depths/dims too)."""
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(
            f"model.variant={variant!r}: one of {', '.join(VARIANTS)} (or give depths and dims, "
            "four each)"
        )
    spec = dict(VARIANTS[variant]) if variant is not None else {}
    spec.update({k: v for k, v in overrides.items() if v is not None})
    if "depths" not in spec or "dims" not in spec:
        raise ConfigError(
            "model: give a variant (one of " + ", ".join(VARIANTS) + ") or both depths and dims"
        )
    spec["depths"], spec["dims"] = tuple(spec["depths"]), tuple(spec["dims"])
    return spec


def from_spec(spec: dict, *, rngs: nnx.Rngs) -> HcNet:
    """HcNet from its full keyword arguments (as `model_spec` returns them)."""
    spec = dict(spec)
    if "scan_blocks" in spec:  # written before block_loop replaced it
        spec["block_loop"] = "scan" if spec.pop("scan_blocks") else "unroll"
    return HcNet(spec.pop("depths"), spec.pop("dims"), rngs=rngs, **spec)


def create_model(variant: str | None = "T", *, rngs: nnx.Rngs, **overrides) -> HcNet:
    """HcNet for a variant name ('mu', 'T', 'S', 'B'); depths, dims and any HcNet argument
    override."""
    return from_spec(model_spec(variant, **overrides), rngs=rngs)
