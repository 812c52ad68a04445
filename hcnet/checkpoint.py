"""Parameters-only checkpoints: `save(dir, model, spec)` and `load(path)` (which also reads workdirs).

A checkpoint directory holds `model.json` (the HcNet arguments) and `params/` (an Orbax
checkpoint of the parameters). `load` rebuilds the model from both with no random init.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from hcnet.model import HcNet, build

SPEC_FILE, PARAMS_DIR = "model.json", "params"


def _jsonable(spec: dict) -> dict:
    return {k: (jnp.dtype(v).name if k.endswith("dtype") else list(v) if isinstance(v, tuple) else v)
            for k, v in spec.items()}


def save(directory, model: HcNet, spec: dict) -> pathlib.Path:
    """Writes spec and parameters to a new directory; refuses to overwrite one."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; choose a new --out directory")
    directory.mkdir(parents=True, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, params)
    (directory / SPEC_FILE).write_text(json.dumps(_jsonable(spec), indent=2) + "\n")
    return directory


def abstract(spec: dict):
    """(graphdef, state) of the model with shapes only: no memory, no random init."""
    return nnx.split(nnx.eval_shape(lambda: build(spec, rngs=nnx.Rngs(0))))


def restore_target(directory, overrides: dict):
    """(graphdef, abstract state, parameter shapes on one device) for the model.json in `directory`."""
    spec = {**json.loads((pathlib.Path(directory) / SPEC_FILE).read_text()), **overrides}
    graphdef, state = abstract(spec)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device),
                          nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, state), nnx.Param)))
    return graphdef, state, target


def assemble(graphdef, state, params: dict) -> HcNet:
    """The model from an abstract state and its parameters as a pure dict (nnx.to_pure_dict's form)."""
    nnx.replace_by_pure_dict(state, params)
    state = jax.tree.map(_concrete, state)  # what is left abstract: the dropout streams' keys and counts
    return nnx.merge(graphdef, state)


def _concrete(leaf):
    """Seed-0 keys and zero counts for abstract RNG-stream leaves; arrays pass through."""
    if not isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.split(jax.random.key(0), leaf.shape) if leaf.shape else jax.random.key(0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def load(path, *, ema: bool = False, step: int | None = None, **overrides) -> HcNet:
    """The model of a checkpoint directory, or of a training workdir's latest checkpoint, in eval mode.

    For a workdir, `ema=True` gives the EMA weights and `step` an older checkpoint. Overrides change
    HcNet arguments that do not touch the parameters, e.g. dtype=jnp.bfloat16.
    """
    path = pathlib.Path(path).absolute()
    from hcnet import workdir
    if workdir.is_workdir(path):
        return workdir.load_model(path, ema=ema, step=step, **overrides)
    if not (path / SPEC_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path}: not an hcnet checkpoint (expected {SPEC_FILE} and {PARAMS_DIR}/ "
                                "as written by `python -m hcnet.convert` or `python -m hcnet.export`) nor a "
                                "training workdir (model.json and checkpoints/)")
    graphdef, state, target = restore_target(path, overrides)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / PARAMS_DIR, target)
    return nnx.view(assemble(graphdef, state, params), deterministic=True)
