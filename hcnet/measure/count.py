"""Parameter and MAC counts of an HcNet, and XLA's own FLOP estimate.

  python -m hcnet.tools.count --variant=T --heat_operator=mean8 [--image_size=224] [--json]

MACs follow the usual convention: convolutions and linear layers only, per image, with a
depthwise filter counted as k*k MACs per output element (not as a dense convolution).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from hcnet import model, nets, upernet
from hcnet.model import HcNet


def count_params(model: nnx.Module) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _eqn_macs(eqn) -> int:
    out = eqn.outvars[0].aval.shape
    if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    if eqn.primitive.name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
        return math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]
    return 0


def jaxpr_macs(jaxpr) -> int:
    """MACs of every dot_general and convolution in a jaxpr, sub-jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        if eqn.primitive.name == "cond":  # one branch runs: a platform's choice (the same network)
            total += max(jaxpr_macs(b.jaxpr) for b in eqn.params["branches"])
            continue
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += repeat * jaxpr_macs(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += repeat * jaxpr_macs(sub)
    return total


def _forward(model: HcNet, height: int, width: int):
    """(function, abstract args) of one image's forward pass."""
    graphdef, state = nnx.split(model)
    image = jax.ShapeDtypeStruct((1, height, width, model.stem.conv1.in_features), jnp.float32)

    def forward(s, x):
        return nnx.merge(graphdef, s)(x)

    return forward, (state, image)


def classifier_counts(
    spec: dict, height: int = 224, width: int | None = None, with_xla: bool = True
) -> dict:
    """params, conv+linear MACs per image and (with_xla) XLA's FLOP estimate of the forward pass."""
    model = nets.abstract({**spec, "depthwise_impl": "conv"})  # depthwise filters as grouped convs
    fn, args = _forward(model, height, width or height)
    out = dict(params=count_params(model), macs=jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr))
    if with_xla:  # HLO cost analysis, before compiling
        out["xla_flops"] = float(jax.jit(fn).lower(*args).cost_analysis()["flops"])
    return out


def count_macs(spec: dict, height: int = 224, width: int | None = None) -> int:
    return classifier_counts(spec, height, width, with_xla=False)["macs"]


def segmentation_counts(
    variant: str, num_classes: int = 150, height: int = 512, width: int = 2048
) -> dict:
    """Parameters (backbone, decode head, auxiliary head, all) of UperNet on HcNet and the MACs of
    one inference forward (backbone and decode head, as mmseg's get_flops counts them) at height x
    width."""
    spec = upernet.spec(
        variant, num_classes, dtype="float32", depthwise_impl="conv"
    )  # k*k MACs per filter
    net = nets.abstract(spec)
    graphdef, state = nnx.split(net)

    def decode(s, x):
        merged = nnx.merge(graphdef, s)
        return merged.decode(merged.backbone.features(x))

    image = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    params = {name: count_params(getattr(net, name)) for name in ("backbone", "decode", "aux")}
    macs = jaxpr_macs(jax.make_jaxpr(decode)(state, image).jaxpr)
    return {**params, "params": sum(params.values()), "macs": macs}


def detection_counts(
    variant: str, num_classes: int = 80, height: int = 800, width: int = 1280
) -> dict:
    """Parameters (backbone, FPN, RPN, box head, mask head, all) of Mask R-CNN on HcNet and the MACs
    of mmdet's get_flops pass at height x width (its forward_dummy: backbone, FPN and RPN on the
    image, the box head on 1000 RoIs and the mask head on 100)."""
    from hcnet.detection import maskrcnn

    spec = {
        **model.model_spec(variant, num_classes=0, dtype="float32", depthwise_impl="conv"),
        "decoder": maskrcnn.decoder_spec(num_classes),
    }
    net = nets.abstract(spec)
    graphdef, state = nnx.split(net)

    def dummy(s, x):
        m = nnx.merge(graphdef, s)
        levels = m.fpn(m.backbone.features(x))
        rpn = [m.rpn(p) for p in levels]
        box = m.box_head(jnp.zeros((1000, 7, 7, levels[0].shape[-1]), x.dtype))
        mask = m.mask_head(jnp.zeros((100, 14, 14, levels[0].shape[-1]), x.dtype))
        return rpn, box, mask

    image = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    parts = ("backbone", "fpn", "rpn", "box_head", "mask_head")
    params = {name: count_params(getattr(net, name)) for name in parts}
    macs = jaxpr_macs(jax.make_jaxpr(dummy)(state, image).jaxpr)
    return {**params, "params": sum(params.values()), "macs": macs}
