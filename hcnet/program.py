"""What a run compiles: the jitted train step, the train state, and `Run`, a validated config made
concrete (task, step counts, optimizer, mesh, program): the one way training, the ahead-of-time
compiler and bench build a run.

The train state is a dict of plain pytrees: `params` (and `ema`) as nnx.to_pure_dict gives them,
`opt` (optax state), `step` (updates done) and `nonfinite_step` (the first step whose loss or
gradient was not finite, -1 if none). A non-finite step leaves parameters and optimizer state as
they were, so the state is never broken. Randomness is a function of (seed, step) alone, so a
resumed run repeats an uninterrupted one bit for bit on the same devices.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx

from hcnet import config as config_lib
from hcnet import nets, optim, sharding, tasks
from hcnet.nets import ModelDef


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    grad_norm: clu_metrics.Average.from_output("grad_norm")
    lr: clu_metrics.LastValue.from_output("lr")


def init_state(spec: dict, tx, seed, ema: bool, build_fn=nets.build) -> dict:
    """A fresh state of the network `build_fn(spec)`; `seed` an int or an int32 scalar (traced, so
    that one program serves every seed)."""
    rngs = nnx.Rngs(params=jax.random.key(seed), dropout=0)
    params = nets.weights_of(build_fn(spec, rngs=rngs))
    state = {
        "params": params,
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "nonfinite_step": jnp.full((), -1, jnp.int32),
    }
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def train_step(
    state, batch, key, *, task, model_def: ModelDef, tx, schedule, accum: int, ema_decay: float
):
    """One optimizer update from one global batch -> (state, TrainMetrics)."""
    key = jax.random.fold_in(key, state["step"])
    k_inputs, k_drop = jax.random.split(key)
    with jax.named_scope("augmentation"):  # the scopes hcnet.measure.hlo groups bytes by
        inputs, targets = task.train_inputs(k_inputs, batch)
    mask = batch["mask"].astype(jnp.float32)
    valid = jnp.maximum(mask.sum(), 1.0)

    def loss_fn(params, x, t, m, k):
        model = model_def.bind(params, k)
        logits = task.forward(model, x)
        with jax.named_scope("loss"):
            loss = jnp.sum(task.loss(logits, t) * m) / valid
        return loss, nets.running_statistics(model)  # BatchNorm's, updated by this forward pass

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    params = state["params"]
    if accum == 1:
        (loss, stats), grads = grad_fn(params, inputs, targets, mask, k_drop)
    else:  # micro-batch i takes rows i, i + accum, ...: every device keeps its share of each

        def split(a):
            return a.reshape(a.shape[0] // accum, accum, *a.shape[1:])

        parts = jax.tree.map(split, (inputs, targets, mask))

        def micro(carry, i):  # running statistics go from one micro-batch to the next
            x, t, m = jax.tree.map(
                lambda a: jax.lax.dynamic_index_in_dim(a, i, 1, keepdims=False), parts
            )
            total, grads, weights = carry
            (loss_i, stats_i), grads_i = grad_fn(weights, x, t, m, jax.random.fold_in(k_drop, i))
            return (
                total + loss_i,
                jax.tree.map(jnp.add, grads, grads_i),
                with_statistics(weights, stats_i),
            ), stats_i

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params), params)
        (loss, grads, _), stats = jax.lax.scan(micro, zero, jnp.arange(accum))
        stats = jax.tree.map(lambda a: a[-1], stats)  # after the last micro-batch

    with jax.named_scope("optimizer"):  # the update, the finite check, the EMA
        grad_norm = optax.tree.norm(
            grads
        )  # (running statistics have none: the loss does not depend on them)
        updates, opt = tx.update(grads, state["opt"], params)
        new_params = with_statistics(optax.apply_updates(params, updates), stats)
        earlier = state["nonfinite_step"] >= 0
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & ~earlier

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        step = state["step"] + 1
        new = {
            "params": keep(new_params, params),
            "opt": keep(opt, state["opt"]),
            "step": step,
            "nonfinite_step": jnp.where(ok | earlier, state["nonfinite_step"], step),
        }
        if "ema" in state:
            ema = jax.tree.map(
                lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], new_params
            )
            new["ema"] = keep(ema, state["ema"])
    metrics = TrainMetrics.single_from_model_output(
        loss=loss, grad_norm=grad_norm, lr=schedule(state["step"])
    )
    return new, metrics


def with_statistics(weights: dict, stats: dict) -> dict:
    """`weights` with its BatchNorm running statistics replaced by `stats` (a sub-tree of the same
    paths)."""
    if not stats:
        return weights
    flat = flax.traverse_util.flatten_dict(weights)
    flat.update(flax.traverse_util.flatten_dict(stats))
    return flax.traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class Program:
    """What a run compiles for a task on a mesh: the state's layout, its initialisation and the
    step."""

    model_def: ModelDef
    spec: dict  # the network's spec as compiled on the mesh (model.block_loop resolved)
    init: object  # () -> state, jitted onto the state's shardings
    abstract_state: (
        dict  # the state's shapes, dtypes and shardings (what a checkpoint is restored onto)
    )
    batch_sharding: object
    step: object  # jitted (state, batch, key) -> (state, TrainMetrics), state donated

    @classmethod
    def build(
        cls,
        task,
        tx,
        schedule,
        mesh,
        *,
        seed: int,
        accum: int = 1,
        ema_decay: float = 0.0,
        fsdp_min_size: int = 2**18,
    ) -> "Program":
        # the network as the mesh's devices run it best (model.block_loop="auto": scanned stages on
        # a TPU)
        spec = nets.for_mesh(task.spec, mesh)
        build_fn = getattr(task, "build", nets.build)  # a task's own network, or one hcnet knows
        model_def, _ = ModelDef.from_spec(spec, build_fn)
        init = functools.partial(init_state, task.spec, tx, ema=ema_decay > 0, build_fn=build_fn)
        shapes = jax.eval_shape(init, seed)
        state_sh = sharding.state_shardings(mesh, shapes, fsdp_min_size)
        batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        train = functools.partial(
            train_step,
            task=task,
            model_def=model_def,
            tx=tx,
            schedule=schedule,
            accum=accum,
            ema_decay=ema_decay,
        )
        step = jax.jit(
            train,
            in_shardings=(state_sh, batch_sh, repl),
            out_shardings=(state_sh, repl),
            donate_argnums=0,
        )
        # the seed is an argument, not a constant: runs that differ only in it share the compiled
        # program
        init = functools.partial(jax.jit(init, out_shardings=state_sh), np.int32(seed))
        abstract_state = sharding.placed(shapes, state_sh)
        return cls(model_def, spec, init, abstract_state, batch_sh, step)


@dataclasses.dataclass(frozen=True)
class Run:
    """A validated config made concrete: its task, step counts, optimizer, mesh and compiled
    program. The one way a run is built: training, the ahead-of-time compiler and bench all start
    here."""

    task: object
    total: int
    per_epoch: int
    tx: object
    mesh: object
    program: Program

    @classmethod
    def create(cls, c, train_examples: int | None = None, devices=None) -> "Run":
        """What train_and_evaluate runs for config c on `devices` (default: all of this job's);
        train_examples: the task's own count unless given (the schedule's length depends on it)."""
        devices = jax.devices() if devices is None else list(devices)
        tasks.validate(c, len(devices))
        task = tasks.create(c)
        examples = task.train_examples() if train_examples is None else train_examples
        total, warmup, per_epoch = config_lib.steps(c, examples)
        depths = task.spec.get("depths")
        tx, schedule = optim.from_config(
            c.optim, c.batch_size, total, warmup, depths=depths, per_epoch=per_epoch
        )
        mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, devices=devices)
        program = Program.build(
            task,
            tx,
            schedule,
            mesh,
            seed=c.seed,
            accum=c.optim.accum_steps,
            ema_decay=c.optim.ema_decay,
            fsdp_min_size=c.mesh.fsdp_min_size,
        )
        return cls(task, total, per_epoch, tx, mesh, program)

    def predict(self):
        """The network's predict function (hcnet.nets.predict_fn) as this run compiles it."""
        return nets.predict_fn(self.program.model_def)

    def abstract_batch(self, batch_size: int | None = None) -> dict:
        """The global training batch (of config.batch_size unless given) as laid out on the mesh."""
        c = self.task.config
        shapes = self.task.batch_shapes(batch_size or c.batch_size)
        return sharding.placed(shapes, self.program.batch_sharding)
