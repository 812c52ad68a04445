"""A new run's parameters from another checkpoint (config.init_from): a training workdir (its latest
or `init_step`, raw or `init_ema`), an export, or a converted reference checkpoint; local or gs://.

Only parameters are taken, never the optimizer state or the data position, and only when the run has
no checkpoint of its own (a resumed fine-tune continues from its own). Each parameter of the new
network is loaded when the checkpoint has it with the same shape, left at its fresh init when a
pattern of `init_skip` matches it (and the head when its shape differs: another number of classes),
left new when the checkpoint lacks it; any other shape difference stops the run with one line naming
the arrays. The network has no positional tables and mean8's neighbour count is computed from the
map's shape, so a checkpoint trained at 224 loads unchanged at any resolution. A segmentation
network (hcnet.upernet) starts from a classification checkpoint by its backbone: the checkpoint's
arrays load under `backbone/`, its classification head is left unused and the decoder's heads are
new.
"""

import re

import jax
import numpy as np

from hcnet import checkpoint, nets, optim, paths, sharding, trained
from hcnet.errors import ConfigError

HEAD = r"^head/"
BACKBONE = "backbone/"  # where a segmentation network keeps its HcNet


def merge(ours: dict, theirs: dict, skip=()) -> tuple[dict, dict]:
    """(ours with theirs' arrays where names and shapes agree, counts); flat {"a/b/c": array} dicts.

    Counts: loaded, skipped (by `skip` or a head of another shape), new (not in theirs), unused (in
    theirs only). Raises ConfigError naming every other array whose shape differs.
    """
    head_differs = any(
        re.search(HEAD, k) and k in theirs and np.shape(theirs[k]) != np.shape(v)
        for k, v in ours.items()
    )
    patterns = [*skip, *([HEAD] if head_differs else [])]
    out, counts, wrong = {}, dict(loaded=0, skipped=0, new=0), []
    for name, value in ours.items():
        if any(re.search(p, name) for p in patterns):
            out[name], counts["skipped"] = value, counts["skipped"] + 1
        elif name not in theirs:
            out[name], counts["new"] = value, counts["new"] + 1
        elif np.shape(theirs[name]) != np.shape(value):
            wrong.append(f"{name} {tuple(np.shape(theirs[name]))} (here {tuple(np.shape(value))})")
        else:
            out[name], counts["loaded"] = theirs[name], counts["loaded"] + 1
    if wrong:
        raise ConfigError(
            f"config.init_from: {len(wrong)} arrays differ in shape from this network's: "
            f"{', '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}; match the model fields to "
            "the "
            "checkpoint's (its model.json) or leave them new with config.init_skip=('PATTERN',)"
        )
    counts["unused"] = sum(1 for name in theirs if name not in ours)
    return out, counts


def check_source(init_from: str) -> None:
    """One line unless config.init_from names a checkpoint (what train.py checks before it
    compiles)."""
    if not (paths.path(init_from) / checkpoint.SPEC_FILE).is_file():
        raise ConfigError(
            f"config.init_from={init_from}: not a checkpoint (no {checkpoint.SPEC_FILE}); give a "
            "training workdir, an export (hcnet.tools.export) or a converted checkpoint"
        )


def start_from(c, state: dict, say=print) -> dict:
    """`state` (a fresh train state) with its parameters, and EMA, taken from config.init_from."""
    check_source(c.init_from)
    source = trained.open(c.init_from, step=c.init_step or None)
    path, step = source.path, source.step
    if c.init_ema and "ema" not in source.available:
        raise ConfigError(
            f"config.init_ema=True: {path} has no EMA weights (available: "
            f"{', '.join(source.available)})"
        )
    _, shapes = nets.ModelDef.from_spec(source.spec)
    mesh = jax.tree.leaves(state["params"])[0].sharding.mesh
    theirs = source.weights(sharding.placed(shapes, sharding.replicated(mesh)), ema=c.init_ema)
    ours, theirs = _by_name(state["params"]), _by_name(theirs)
    if any(n.startswith(BACKBONE) for n in ours) and not any(
        n.startswith(BACKBONE) for n in theirs
    ):
        theirs = {
            BACKBONE + n: v for n, v in theirs.items()
        }  # a classification network as a backbone
    merged, counts = merge(ours, theirs, tuple(c.init_skip))
    params = jax.tree_util.tree_unflatten(
        jax.tree.structure(state["params"]),
        [jax.device_put(merged[n].astype(v.dtype), v.sharding) for n, v in ours.items()],
    )
    say(
        f"init_from {path}"
        + (f" (step {step}{', EMA' if c.init_ema else ''})" if step is not None else "")
        + f": {counts['loaded']} arrays loaded, {counts['skipped']} skipped on purpose, "
        f"{counts['new']} new"
        + (f", {counts['unused']} of the checkpoint's unused" if counts["unused"] else "")
    )
    state = {**state, "params": params}
    if "ema" in state:
        state["ema"] = jax.tree.map(lambda p: p.copy(), params)
    return state


def _by_name(tree: dict) -> dict:
    """{"a/b/c": array} of a nested dict."""
    return {optim.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
