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
import importlib.metadata
import os
import signal
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx

from hcnet import checkpoint, finetune, monitor, nets, optim, paths, sharding, tasks, trained
from hcnet import config as config_lib
from hcnet.errors import ConfigError
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
    inputs, targets = task.train_inputs(k_inputs, batch)
    mask = batch["mask"].astype(jnp.float32)
    valid = jnp.maximum(mask.sum(), 1.0)

    def loss_fn(params, x, t, m, k):
        model = model_def.bind(params, k)
        loss = jnp.sum(task.loss(task.forward(model, x), t) * m) / valid
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


def run_evaluators(evaluators, state) -> dict:
    """Every evaluator on the raw weights (`<name>/<metric>`) and, when kept, the EMA
    (`<name>_ema/<metric>`)."""
    out = {}
    for weights, suffix in (("params", ""), ("ema", "_ema")):
        if weights in state:
            for ev in evaluators:
                out.update(
                    {metric_key(ev.name, suffix, k): v for k, v in ev(state[weights]).items()}
                )
    return out


def metric_key(evaluator: str, suffix: str, metric: str) -> str:
    """`<evaluator>[_ema]/<metric>`: how every evaluation result is named (logs, best_metric,
    eval.py)."""
    return f"{evaluator}{suffix}/{metric}"


def check_best_metric(name: str, evaluators) -> None:
    reported = [
        metric_key(ev.name, s, m) for ev in evaluators for s in ("", "_ema") for m in ev.metrics
    ]
    if name not in reported:
        raise ConfigError(
            f"config.best_metric={name!r}: one of the evaluators' metrics ({', '.join(reported)})"
        )


class Stop:
    """SIGTERM (one process) or a preemption notice (JAX's sync point on several): save and
    leave."""

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
        where = f"step {last[-1]} in {checkpoints.directory}" if last else "none"
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad} (stopped at step {step}); the last good "
            "checkpoint is "
            f"{where}; lower config.optim.lr or check the data"
        )


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
        tx, schedule = optim.from_config(c.optim, c.batch_size, total, warmup, depths=depths)
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


# the libtpu jax 0.10.2 pins: its profiler is the one jax.profiler was built with
PROFILER_LIBTPU = "0.0.42.1"


def check_profiler(profile_steps) -> None:
    """One line before anything compiles when config.profile_steps asks for a trace in a process
    that has loaded another libtpu: jax.profiler.start_trace crashes (SIGSEGV) beside libtpu 0.0.52
    (README, "Running on a TPU VM")."""
    first, last = profile_steps
    if last <= first or "libtpu" not in sys.modules:
        return
    version = importlib.metadata.version("libtpu")
    if version != PROFILER_LIBTPU:
        raise ConfigError(
            f"config.profile_steps={tuple(profile_steps)}: jax.profiler crashes beside libtpu "
            f"{version}; set profile_steps=(0, 0), or trace with libtpu=={PROFILER_LIBTPU} "
            "(jax[tpu] 0.10.2's own)"
        )


def train_and_evaluate(c, workdir) -> dict:
    """Trains (resuming from workdir's newest checkpoint), evaluates, checkpoints; returns the last
    metrics. `workdir` (and config.dataset.data_dir) may be local or gs://."""
    workdir = paths.path(workdir)
    paths.check(workdir, write=True)
    for where in (c.dataset.data_dir, c.init_from):
        if where:
            paths.check(where)
    if c.init_from:
        finetune.check_source(c.init_from)
    run = Run.create(c)
    check_profiler(c.profile_steps)  # after the devices started: on a TPU VM libtpu is loaded then
    evaluators = run.task.evaluators(run.mesh, run.predict())
    check_best_metric(c.best_metric, evaluators)

    trained.write_run_files(workdir, c, run.task.spec)
    checkpoints = checkpoint.Checkpoints(
        workdir, keep=c.keep_checkpoints, async_save=c.checkpoint_async, best_metric=c.best_metric
    )
    console = monitor.Console(run.total, run.per_epoch, c.batch_size)
    writer = monitor.Writers([])
    stop = Stop(checkpoints)
    try:
        first, state, data_state = _restore_or_init(run, checkpoints, console)
        if first == 1 and c.init_from:  # a new run: its parameters from another run or checkpoint
            state = finetune.start_from(c, state, console.say)
        writer = monitor.create_writer(workdir, first)
        loader = run.task.train_loader(run.program.batch_sharding, state=data_state)
        loop = Loop(c, run, evaluators, checkpoints, console, writer, stop, workdir)
        return loop.run(state, loader, first)
    finally:
        stop.restore()
        writer.close()
        checkpoints.close()


def _restore_or_init(run: Run, checkpoints: checkpoint.Checkpoints, console: monitor.Console):
    """(first step to run, state, loader state): the newest readable checkpoint's, or fresh ones."""
    restored = checkpoints.restore(run.program.abstract_state)
    if restored is None:
        return 1, run.program.init(), None
    step, state, data_state = restored
    done = f": the run is complete ({run.total} steps)" if step >= run.total else ""
    console.say(f"resumed from {checkpoints.directory}/{step}{done}")
    return step + 1, state, data_state


class Profile:
    """A jax.profiler trace of steps [first, last) in workdir/profile (staged locally, then
    copied)."""

    def __init__(self, steps, workdir, stack: contextlib.ExitStack):
        self.first, self.last = steps
        self.workdir, self.stack, self.scope = workdir, stack, None

    def before(self, step: int) -> None:
        if self.last > self.first and step == self.first + 1:
            self.scope = contextlib.ExitStack()
            local = self.scope.enter_context(paths.staged(self.workdir / "profile"))
            self.stack.callback(self.scope.close)  # an unfinished trace's staging folder goes too
            jax.profiler.start_trace(os.fspath(local))

    def after(self, step: int, state) -> None:
        if self.scope is not None and step == self.last:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.scope.close()
            self.scope = None


class Loop:
    """The training loop: a step, then the periodic actions due at it (log, evaluate, checkpoint),
    each a method of (step, state); a trace of the configured steps; a stop on SIGTERM or
    preemption."""

    def __init__(self, c, run: Run, evaluators, checkpoints, console, writer, stop, workdir):
        self.c, self.run_, self.evaluators = c, run, evaluators
        self.checkpoints, self.console, self.writer, self.stop = checkpoints, console, writer, stop
        self.workdir, self.loader, self.metrics, self.last = workdir, None, None, {}

    def due(self, every: int, step: int) -> bool:
        return bool(every and step % every == 0) or step == self.run_.total

    def run(self, state, loader, first: int) -> dict:
        """Runs steps first..total; the last metrics (and whether a signal stopped it)."""
        c, program, self.loader = self.c, self.run_.program, loader
        key = sharding.replicated_key(c.seed, self.run_.mesh)
        with contextlib.ExitStack() as stack:
            profile = Profile(tuple(c.profile_steps), self.workdir, stack)
            for step in range(first, self.run_.total + 1):
                profile.before(step)
                t = time.perf_counter()
                batch = next(loader)
                self.console.waited(time.perf_counter() - t)
                if step == first:
                    sharding.enter_together(program.step, state, batch, key, name="train-step")
                state, metrics = program.step(state, batch, key)
                self.metrics = metrics if self.metrics is None else self.metrics.merge(metrics)
                profile.after(step, state)
                self.console.progress(step)
                if step == first:
                    self.compiled(step, state, t)
                if self.stop(step):
                    return self.preempt(step, state)
                if self.due(c.log_every_steps, step):
                    self.log(step, state)
                evaluated = self.due(c.eval_every_steps, step)
                if evaluated:
                    self.evaluate(step, state)
                if self.due(c.checkpoint_every_steps, step):
                    self.save(step, state, evaluated)
        # the last step always logs, so it was checked for non-finite values there
        self.checkpoints.wait()
        last_step = self.run_.total if first <= self.run_.total else first - 1
        return {"step": last_step, "preempted": False, **self.last}

    def compiled(self, step: int, state, start: float) -> None:
        jax.block_until_ready(state)
        self.console.say(f"step {step}: compiled and ran in {time.perf_counter() - start:.1f} s")
        self.console.mark(step)  # the first step's time is compilation

    def preempt(self, step: int, state) -> dict:
        check_finite(state, step, self.checkpoints)
        self.checkpoints.save(step, state, self.loader.get_state())
        self.checkpoints.wait()
        self.console.say(
            f"stopping at step {step} on SIGTERM / preemption: checkpoint saved in "
            f"{self.checkpoints.directory}/{step}; the same command resumes"
        )
        return {"step": step, "preempted": True, **self.last}

    def log(self, step: int, state) -> None:
        check_finite(state, step, self.checkpoints)
        computed = sharding.to_host(self.metrics).compute()
        scalars = {f"train/{k}": float(v) for k, v in computed.items()}
        scalars.update(self.console.line(step, scalars))
        scalars["train/epoch"] = step / self.run_.per_epoch
        self.writer.write_scalars(step, scalars)
        self.metrics, self.last = None, {**self.last, **scalars}

    def evaluate(self, step: int, state) -> None:
        scalars = run_evaluators(self.evaluators, state)
        self.writer.write_scalars(step, scalars)
        shown = []
        for suffix in ("", "_ema"):
            for ev in self.evaluators:
                for m in ev.headline:
                    key = metric_key(ev.name, suffix, m)
                    if key in scalars:
                        shown.append(f"{key} {scalars[key]:.4f}")
        self.console.say(f"step {step} eval: " + ", ".join(shown))
        self.last.update(scalars)
        self.console.mark(step)

    def save(self, step: int, state, evaluated: bool) -> None:
        check_finite(state, step, self.checkpoints)
        metrics = self.last if evaluated else None
        self.checkpoints.save(step, state, self.loader.get_state(), metrics)
        self.console.mark(step)
