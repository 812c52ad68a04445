"""A network as the rest of the project handles it: a spec (plain keyword arguments, as model.json
holds them), built one way, split into a hashable definition and a tree of weights, and run for
prediction one way (`predict_fn`: uint8 images in, outputs out, in evaluation mode).

A spec is HcNet's arguments (`hcnet.model.model_spec`) or, with a `decoder` entry, a segmentation
network on an HcNet backbone (`hcnet.upernet.spec`).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from hcnet import model, upernet
from hcnet.data.augment import normalize
from hcnet.detection import maskrcnn

WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)  # what a checkpoint holds of a network


def build(spec: dict, *, rngs: nnx.Rngs) -> nnx.Module:
    """The network of a spec: HcNet, or UperNet on HcNet when the spec has a `decoder` entry."""
    spec = dict(spec)
    decoder = spec.pop("decoder", None)
    if decoder is None:
        return model.from_spec(spec, rngs=rngs)
    if decoder.get("kind") == "mask_rcnn":
        return maskrcnn.from_spec(spec, decoder, rngs=rngs)
    return upernet.from_spec(spec, decoder, rngs=rngs)


def abstract(spec: dict, build_fn=build) -> nnx.Module:
    """The network `build_fn(spec)` with shapes only: no parameter memory, no random draws."""
    return nnx.eval_shape(lambda: build_fn(spec, rngs=nnx.Rngs(0)))


def for_platform(spec: dict, platform: str) -> dict:
    """The spec with block_loop="auto" made concrete for a program compiled for `platform` (a JAX
    device's `platform`): the blocks scanned on a TPU, where the compiler's time grows with each
    block's code, and unrolled elsewhere, where the scan is slower, and with dropout, which a
    scanned stage does not draw (BENCHMARKS.md, "Compiled ahead of time")."""
    spec = dict(spec)
    if spec.get("block_loop", "auto") == "auto":
        scan = platform == "tpu" and not spec.get("dropout", 0.0)
        spec["block_loop"] = "scan" if scan else "unroll"
    return spec


def for_mesh(spec: dict, mesh) -> dict:
    """`for_platform` for the platform of a mesh's devices: the network a program on that mesh
    compiles."""
    return for_platform(spec, mesh.devices.flat[0].platform)


def spec_json(spec: dict) -> dict:
    """A spec as JSON can hold it (dtypes by name, tuples as lists); `build` takes it back as it
    is."""
    out = {}
    for k, v in spec.items():
        if k.endswith("dtype"):
            v = jnp.dtype(v).name
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def eval_view(module: nnx.Module) -> nnx.Module:
    """The network in evaluation mode: no dropout or drop path, BatchNorm on its running
    statistics."""
    modules = (m for _, m in nnx.iter_modules(module))
    batch_norm = any(isinstance(m, nnx.BatchNorm) for m in modules)
    extra = {"use_running_average": True} if batch_norm else {}
    return nnx.view(module, deterministic=True, **extra)


def running_statistics(module: nnx.Module) -> dict:
    """The BatchNorm running statistics of a module as a pure dict ({} when it has none)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


def weights_of(module: nnx.Module) -> dict:
    """A module's weights (parameters and BatchNorm statistics) as a pure dict."""
    return nnx.to_pure_dict(nnx.state(module, WEIGHTS))


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A network without its weights: the graph and the template of its dropout / drop-path RNG
    streams. Hashable, so a jitted step can take it as a static argument."""

    graphdef: nnx.GraphDef
    rngs: object  # abstract RNG-stream state (keys and counts)

    @classmethod
    def from_spec(cls, spec: dict, build_fn=build) -> tuple["ModelDef", dict]:
        """(definition, abstract weights as a pure dict) of the network `build_fn(spec)` (`build`:
        every network hcnet knows; a task may bring its own, hcnet.tasks.Task.build).

        The weights are the parameters and, in a network with BatchNorm (UperNet's heads), its
        running statistics beside them (`mean`, `var`): everything a trained network needs, in one
        tree."""
        graphdef, weights, rngs = nnx.split(abstract(spec, build_fn), WEIGHTS, ...)
        return cls(graphdef, rngs), nnx.to_pure_dict(weights)

    def __hash__(self):
        return hash(self.graphdef)

    def bind(self, weights: dict, key=None) -> nnx.Module:
        """The network with `weights`; its RNG streams start from `key` (None: a fixed key, for eval
        mode)."""
        leaves, tree = jax.tree.flatten(self.rngs)
        key = jax.random.key(0) if key is None else key
        fresh = []
        for i, x in enumerate(leaves):
            is_key = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            fresh.append(jax.random.fold_in(key, i) if is_key else jnp.zeros(x.shape, x.dtype))
        return nnx.merge(self.graphdef, weights, jax.tree.unflatten(tree, fresh))

    def eval_model(self, weights: dict) -> nnx.Module:
        """The network with `weights` in evaluation mode."""
        return eval_view(self.bind(weights))


Predict = Callable[[dict, jax.Array], jax.Array]


def predict_fn(model_def: ModelDef) -> Predict:
    """`predict(weights, images)`: uint8 images (B, H, W, 3) normalised as in training, through the
    network in evaluation mode: logits (B, classes), or a segmentation network's per-pixel logits
    (B, H, W, classes). What every evaluator, export and tool runs; jit it where it is used."""

    def predict(weights, images, *extra):  # extra: what a detector takes, each image's size
        return model_def.eval_model(weights)(normalize(images), *extra)

    return predict
