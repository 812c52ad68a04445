"""Parameter and MAC counts of an HcNet, and XLA's own FLOP estimate.

  python -m hcnet.count --model=T --heat-operator=mean8 [--image-size=224] [--json]

MACs follow the usual convention: convolutions and linear layers only, per image, with a
depthwise filter counted as k*k MACs per output element (not as a dense convolution).
"""
import argparse
import json
import math

import jax
import jax.numpy as jnp
from flax import nnx

from hcnet.model import HEAT_OPERATORS, VARIANTS, HcNet, build, model_spec


def abstract_model(spec: dict) -> HcNet:
    """The model with shapes only: no parameter memory, no random draws."""
    return nnx.eval_shape(lambda: build(spec, rngs=nnx.Rngs(0)))


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
    return (lambda s, x: nnx.merge(graphdef, s)(x)), (state, image)


def summary(spec: dict, height: int = 224, width: int | None = None, with_xla: bool = True) -> dict:
    """params, conv+linear MACs per image and (with_xla) XLA's FLOP estimate of the forward pass."""
    model = abstract_model({**spec, "depthwise_impl": "conv"})  # depthwise filters as grouped convs
    fn, args = _forward(model, height, width or height)
    out = dict(params=count_params(model), macs=jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr))
    if with_xla:  # HLO cost analysis, before compiling
        out["xla_flops"] = float(jax.jit(fn).lower(*args).cost_analysis()["flops"])
    return out


def count_macs(spec: dict, height: int = 224, width: int | None = None) -> int:
    return summary(spec, height, width, with_xla=False)["macs"]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hcnet.count", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="T", choices=sorted(VARIANTS))
    parser.add_argument("--heat-operator", default="mean8", choices=HEAT_OPERATORS)
    parser.add_argument("--depths", help="comma-separated, e.g. 3,8,18,3 (overrides the variant's)")
    parser.add_argument("--image-size", default="224", help="N or HxW, e.g. 224 or 512x768")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--no-xla", action="store_true", help="skip XLA's FLOP estimate")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        height, width = (int(v) for v in (args.image_size.split("x") * 2)[:2])
        depths = tuple(int(d) for d in args.depths.split(",")) if args.depths else None
    except ValueError:
        parser.error(f"--image-size={args.image_size!r} / --depths={args.depths!r}: expected N or HxW "
                     "and comma-separated integers")
    if min(height, width) < 32:
        parser.error(f"--image-size={args.image_size}: each side must be at least 32")
    spec = model_spec(args.model, heat_operator=args.heat_operator, depths=depths,
                      num_classes=args.num_classes)
    out = summary(spec, height, width, with_xla=not args.no_xla)
    if args.json:
        print(json.dumps(out))
        return
    print(f"HcNet-{args.model} ({args.heat_operator}, depths {list(spec['depths'])}, "
          f"dims {list(spec['dims'])}) at {height}x{width}")
    print(f"  params            {out['params']:,}")
    print(f"  conv+linear MACs  {out['macs']:,} ({out['macs'] / 1e9:.3f} G)")
    if "xla_flops" in out:
        print(f"  XLA FLOPs         {out['xla_flops']:,.0f} ({out['xla_flops'] / 1e9:.3f} G; "
              "2 per MAC plus elementwise work)")


if __name__ == "__main__":
    main()
