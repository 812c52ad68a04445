"""Training: the jitted train step and `train_and_evaluate(config, workdir)`.

The loop knows what it trains only through the task (hcnet.tasks.Task): the network, the training
batches, what happens to a batch on the device, the per-example loss and the evaluators.

The train state is a dict of plain pytrees: `params` (and `ema`) as nnx.to_pure_dict gives them,
`opt` (optax state), `step` (updates done) and `nonfinite_step` (the first step whose loss or
gradient was not finite, -1 if none). A non-finite step leaves parameters and optimizer state as
they were, so the state is never broken; the loop stops at the next log or checkpoint step, naming
the step. Randomness is a function of (seed, step) alone, so a resumed run repeats an uninterrupted
one bit for bit on the same devices.
"""
import contextlib
import dataclasses
import functools
import os
import signal
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx

from hcnet import checkpoint, finetune, monitor, optim, paths, run_files, sharding, tasks
from hcnet import config as config_lib
from hcnet.errors import ConfigError
from hcnet import model as model_lib
from hcnet.model import ModelDef


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    grad_norm: clu_metrics.Average.from_output("grad_norm")
    lr: clu_metrics.LastValue.from_output("lr")


def init_state(task, tx, seed, ema: bool) -> dict:
    """A fresh state; `seed` an int or an int32 scalar (traced, so that one program serves every seed)."""
    rngs = nnx.Rngs(params=jax.random.key(seed), dropout=0)
    params = nnx.to_pure_dict(nnx.state(task.build(task.spec, rngs=rngs), model_lib.WEIGHTS))
    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "nonfinite_step": jnp.full((), -1, jnp.int32)}
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def train_step(state, batch, key, *, task, model_def: ModelDef, tx, schedule, accum: int, ema_decay: float):
    """One optimizer update from one global batch -> (state, TrainMetrics)."""
    key = jax.random.fold_in(key, state["step"])
    k_inputs, k_drop = jax.random.split(key)
    inputs, targets = task.train_inputs(k_inputs, batch)
    mask = batch["mask"].astype(jnp.float32)
    valid = jnp.maximum(mask.sum(), 1.0)

    def loss_fn(params, x, t, m, k):
        model = model_def.bind(params, k)
        loss = jnp.sum(task.loss(task.forward(model, x), t) * m) / valid
        return loss, model_lib.running_statistics(model)  # BatchNorm's, updated by this forward pass

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    params = state["params"]
    if accum == 1:
        (loss, stats), grads = grad_fn(params, inputs, targets, mask, k_drop)
    else:  # micro-batch i takes rows i, i + accum, ...: every device keeps its share of each
        split = lambda a: a.reshape(a.shape[0] // accum, accum, *a.shape[1:])
        parts = jax.tree.map(split, (inputs, targets, mask))

        def micro(carry, i):  # running statistics go from one micro-batch to the next
            x, t, m = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 1, keepdims=False), parts)
            total, grads, weights = carry
            (loss_i, stats_i), grads_i = grad_fn(weights, x, t, m, jax.random.fold_in(k_drop, i))
            return (total + loss_i, jax.tree.map(jnp.add, grads, grads_i), with_statistics(weights, stats_i)), stats_i
        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params), params)
        (loss, grads, _), stats = jax.lax.scan(micro, zero, jnp.arange(accum))
        stats = jax.tree.map(lambda a: a[-1], stats)  # after the last micro-batch

    grad_norm = optax.tree.norm(grads)  # (running statistics have none: the loss does not depend on them)
    updates, opt = tx.update(grads, state["opt"], params)
    new_params = with_statistics(optax.apply_updates(params, updates), stats)
    earlier = state["nonfinite_step"] >= 0
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & ~earlier
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    step = state["step"] + 1
    new = {"params": keep(new_params, params), "opt": keep(opt, state["opt"]), "step": step,
           "nonfinite_step": jnp.where(ok | earlier, state["nonfinite_step"], step)}
    if "ema" in state:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], new_params)
        new["ema"] = keep(ema, state["ema"])
    metrics = TrainMetrics.single_from_model_output(loss=loss, grad_norm=grad_norm, lr=schedule(state["step"]))
    return new, metrics


def with_statistics(weights: dict, stats: dict) -> dict:
    """`weights` with its BatchNorm running statistics replaced by `stats` (a sub-tree of the same paths)."""
    if not stats:
        return weights
    flat = flax.traverse_util.flatten_dict(weights)
    flat.update(flax.traverse_util.flatten_dict(stats))
    return flax.traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class Program:
    """What a run compiles for a task on a mesh: the state's layout, its initialisation and the step."""
    model_def: ModelDef
    spec: dict               # the network's spec as compiled on the mesh (model.block_loop resolved)
    init: object             # () -> state, jitted onto the state's shardings
    abstract_state: dict     # the state's shapes, dtypes and shardings (what a checkpoint is restored onto)
    batch_sharding: object
    step: object             # jitted (state, batch, key) -> (state, TrainMetrics), state donated

    @classmethod
    def build(cls, task, tx, schedule, mesh, *, seed: int, accum: int = 1, ema_decay: float = 0.0,
              fsdp_min_size: int = 2 ** 18) -> "Program":
        # the network as the mesh's devices run it best (model.block_loop="auto": scanned stages on a TPU)
        spec = model_lib.for_mesh(task.spec, mesh)
        model_def, _ = ModelDef.from_spec(spec, task.build)
        init = functools.partial(init_state, task, tx, ema=ema_decay > 0)
        shapes = jax.eval_shape(init, seed)
        state_sh = sharding.state_shardings(mesh, shapes, fsdp_min_size)
        abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, state_sh)
        batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        step = jax.jit(functools.partial(train_step, task=task, model_def=model_def, tx=tx, schedule=schedule,
                                         accum=accum, ema_decay=ema_decay),
                       in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl), donate_argnums=0)
        # the seed is an argument, not a constant: runs that differ only in it share the compiled program
        init = functools.partial(jax.jit(init, out_shardings=state_sh), np.int32(seed))
        return cls(model_def, spec, init, abstract_state, batch_sh, step)


def evaluate(evaluators, state) -> dict:
    """Every evaluator on the raw weights (`<name>/<metric>`) and, when kept, the EMA (`<name>_ema/<metric>`)."""
    out = {}
    for weights, suffix in (("params", ""), ("ema", "_ema")):
        if weights in state:
            for ev in evaluators:
                out.update({f"{ev.name}{suffix}/{k}": v for k, v in ev(state[weights]).items()})
    return out


def check_best_metric(name: str, evaluators) -> None:
    reported = [f"{ev.name}{s}/{m}" for ev in evaluators for s in ("", "_ema") for m in ev.metrics]
    if name not in reported:
        raise ConfigError(f"config.best_metric={name!r}: one of the evaluators' metrics ({', '.join(reported)})")


class Stop:
    """SIGTERM (one process) or a preemption notice (JAX's sync point on several): save and leave."""

    def __init__(self, checkpoints: checkpoint.Checkpoints):
        self.checkpoints, self.signalled = checkpoints, False
        self._previous = None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.signalled = True

    def __call__(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.signalled
        return self.checkpoints.manager.reached_preemption(step)

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_finite(state, step: int, checkpoints: checkpoint.Checkpoints) -> None:
    """Raises FloatingPointError naming the first non-finite step and the last good checkpoint."""
    bad = int(sharding.to_host(state["nonfinite_step"]))
    if bad >= 0:
        checkpoints.wait()
        last = checkpoints.steps()
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad} (stopped at step {step}); the last good checkpoint is "
            f"{'step %d in %s' % (last[-1], checkpoints.directory) if last else 'none'}; lower config.optim.lr "
            "or check the data")


def restore_or_init(program: Program, checkpoints: checkpoint.Checkpoints, console: monitor.Console, total: int):
    """(first step to run, state, loader state): the newest readable checkpoint's, or fresh ones."""
    restored = checkpoints.restore(program.abstract_state)
    if restored is None:
        return 1, program.init(), None
    step, state, data_state = restored
    console.say(f"resumed from {checkpoints.directory}/{step}" + (f": the run is complete ({total} steps)"
                                                                   if step >= total else ""))
    return step + 1, state, data_state


@dataclasses.dataclass(frozen=True)
class Run:
    """A validated config made concrete: its task, step counts, optimizer, mesh and compiled program."""
    task: object
    total: int
    per_epoch: int
    tx: object
    mesh: object
    program: Program

    @classmethod
    def create(cls, c, train_examples: int | None = None) -> "Run":
        """What train_and_evaluate runs for config c (train_examples: the task's own count unless given)."""
        config_lib.validate(c, jax.device_count())
        task = tasks.create(c)
        total, warmup, per_epoch = config_lib.steps(c, task.train_examples() if train_examples is None
                                                    else train_examples)
        tx, schedule = optim.from_config(c.optim, c.batch_size, total, warmup, depths=task.spec.get("depths"))
        mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp)
        program = Program.build(task, tx, schedule, mesh, seed=c.seed, accum=c.optim.accum_steps,
                                ema_decay=c.optim.ema_decay, fsdp_min_size=c.mesh.fsdp_min_size)
        return cls(task, total, per_epoch, tx, mesh, program)


def train_and_evaluate(c, workdir) -> dict:
    """Trains (resuming from workdir's newest checkpoint), evaluates, checkpoints; returns the last metrics.
    `workdir` (and config.dataset.data_dir) may be local or gs://."""
    workdir = paths.path(workdir)
    paths.check(workdir, write=True)
    for where in (c.dataset.data_dir, c.init_from):
        if where:
            paths.check(where)
    if c.init_from:
        finetune.check_source(c.init_from)
    run = Run.create(c)
    task, total, per_epoch, mesh, program = run.task, run.total, run.per_epoch, run.mesh, run.program
    evaluators = task.evaluators(mesh, program.model_def)
    check_best_metric(c.best_metric, evaluators)

    run_files.write(workdir, c, task.spec)
    checkpoints = checkpoint.Checkpoints(workdir, keep=c.keep_checkpoints, async_save=c.checkpoint_async,
                                         best_metric=c.best_metric)
    console = monitor.Console(total, per_epoch, c.batch_size)
    writer = monitor.Writers([])
    stop = Stop(checkpoints)
    try:
        first, state, data_state = restore_or_init(program, checkpoints, console, total)
        if first == 1 and c.init_from:  # a new run: its parameters from another run or checkpoint
            state = finetune.start_from(c, state, console.say)
        writer = monitor.create_writer(workdir, first)
        loader = task.train_loader(program.batch_sharding, state=data_state)
        key = sharding.replicated_key(c.seed, mesh)
        return _loop(c, workdir, program, state, loader, key, range(first, total + 1), evaluators, checkpoints,
                     console, writer, stop, per_epoch)
    finally:
        stop.restore()
        writer.close()
        checkpoints.close()


def _loop(c, workdir, program, state, loader, key, steps, evaluators, checkpoints, console, writer, stop,
          per_epoch) -> dict:
    """Runs `steps`: train, and on their schedules log, evaluate, checkpoint, trace, stop on a signal."""
    total, profile = steps.stop - 1, tuple(c.profile_steps)
    tracing = profile[1] > profile[0]
    every = lambda n, step: (n and step % n == 0) or step == total
    acc, last = None, {}
    with contextlib.ExitStack() as trace:  # removes the staging folder of a trace the loop leaves unfinished
        for step in steps:
            if tracing and step == profile[0] + 1:  # the profiler writes local files: staged, then copied
                jax.profiler.start_trace(os.fspath(trace.enter_context(paths.staged(workdir / "profile"))))
            t = time.perf_counter()
            batch = next(loader)
            console.waited(time.perf_counter() - t)
            if step == steps.start:
                sharding.enter_together(program.step, state, batch, key, name="train-step")
            state, metrics = program.step(state, batch, key)
            acc = metrics if acc is None else acc.merge(metrics)
            if tracing and step == profile[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                trace.close()
            console.progress(step)
            if step == steps.start:
                jax.block_until_ready(state)
                console.say(f"step {step}: compiled and ran in {time.perf_counter() - t:.1f} s")
                console.mark(step)  # the first step's time is compilation
            if stop(step):
                check_finite(state, step, checkpoints)
                checkpoints.save(step, state, loader.get_state())
                checkpoints.wait()
                console.say(f"stopping at step {step} on SIGTERM / preemption: checkpoint saved in "
                            f"{checkpoints.directory}/{step}; the same command resumes")
                return {"step": step, "preempted": True, **last}
            if every(c.log_every_steps, step):
                check_finite(state, step, checkpoints)
                scalars = {f"train/{k}": float(v) for k, v in sharding.to_host(acc).compute().items()}
                scalars.update(console.line(step, scalars), **{"train/epoch": step / per_epoch})
                writer.write_scalars(step, scalars)
                acc, last = None, {**last, **scalars}
            evaluated = every(c.eval_every_steps, step)
            if evaluated:
                scalars = evaluate(evaluators, state)
                writer.write_scalars(step, scalars)
                console.say(f"step {step} eval: " + ", ".join(
                    f"{ev.name}{s}/{m} {scalars[f'{ev.name}{s}/{m}']:.4f}" for s in ("", "_ema") for ev in evaluators
                    for m in ev.headline if f"{ev.name}{s}/{m}" in scalars))
                last.update(scalars)
                console.mark(step)
            if every(c.checkpoint_every_steps, step):
                check_finite(state, step, checkpoints)
                checkpoints.save(step, state, loader.get_state(), last if evaluated else None)
                console.mark(step)
    checkpoints.wait()  # the last step always logs, so it was checked for non-finite values there
    return {"step": steps.stop - 1 if len(steps) else steps.start - 1, "preempted": False, **last}
