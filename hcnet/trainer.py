"""Training: `train_and_evaluate(config, workdir)` and its loop, around the step hcnet.program
compiles.

The loop knows what it trains only through the task (hcnet.tasks.Task): the network, the training
batches, what happens to a batch on the device, the per-example loss and the evaluators. A
non-finite step (the state's `nonfinite_step`) stops it at the next log or checkpoint step, naming
the step and the last good checkpoint.
"""

import contextlib
import os
import signal
import time

import jax

from hcnet import checkpoint, faults, finetune, hostenv, monitor, paths, sharding, trained
from hcnet.errors import ConfigError
from hcnet.program import Run


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


def check_profiler(profile_steps) -> None:
    """One line before anything compiles when config.profile_steps asks for a trace beside a libtpu
    the profiler crashes with (hcnet.hostenv.check_tracing)."""
    first, last = profile_steps
    if last > first:
        hostenv.check_tracing(f"config.profile_steps={tuple(profile_steps)}")


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

    watchdog = faults.Watchdog(c.step_timeout, c.phase_timeout)
    try:
        watchdog.phase("setting up the run (its files, its checkpoints)")
        return _train(c, workdir, run, evaluators, watchdog)
    except Exception as e:  # a full disk or a failing bucket: one line (hcnet.faults)
        fault = faults.explain(e, workdir, sharding.nbytes(run.program.abstract_state))
        if fault is None:
            raise
        raise fault from None
    finally:
        watchdog.close()


def _train(c, workdir, run: Run, evaluators, watchdog: faults.Watchdog) -> dict:
    trained.write_run_files(workdir, c, run.task.spec)
    checkpoints = checkpoint.Checkpoints(
        workdir, keep=c.keep_checkpoints, async_save=c.checkpoint_async, best_metric=c.best_metric
    )
    console = monitor.Console(run.total, run.per_epoch, c.batch_size)
    writer = monitor.Writers([])
    stop = Stop(checkpoints)
    try:
        watchdog.phase("restoring the last checkpoint")
        first, state, data_state = _restore_or_init(run, checkpoints, console)
        if first == 1 and c.init_from:  # a new run: its parameters from another run or checkpoint
            state = finetune.start_from(c, state, console.say)
        writer = monitor.create_writer(workdir, first)
        loader = run.task.train_loader(run.program.batch_sharding, state=data_state)
        loop = Loop(c, run, evaluators, checkpoints, console, writer, stop, workdir)
        return loop.run(state, loader, first, watchdog)
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

    def run(self, state, loader, first: int, watchdog: faults.Watchdog) -> dict:
        """Runs steps first..total; the last metrics (and whether a signal stopped it)."""
        c, program, self.loader, self.watchdog = self.c, self.run_.program, loader, watchdog
        key = sharding.replicated_key(c.seed, self.run_.mesh)
        with contextlib.ExitStack() as stack:
            profile = Profile(tuple(c.profile_steps), self.workdir, stack)
            for step in range(first, self.run_.total + 1):
                if step == first:
                    watchdog.phase(f"step {step} (compiling)")
                else:
                    watchdog.step(step)
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
                if self.due(c.log_every_steps, step):
                    self.log(step, state)
                evaluated = self.due(c.eval_every_steps, step)
                if evaluated:
                    self.evaluate(step, state)
                saved = self.due(c.checkpoint_every_steps, step)
                if saved:
                    self.save(step, state, evaluated)
                # after the step's own actions, so that a resumed run's logs are the same
                if self.stop(step) and step < self.run_.total:
                    return self.preempt(step, state, saved)
        # the last step always logs, so it was checked for non-finite values there
        watchdog.phase("the last checkpoint")
        self.checkpoints.wait()
        last_step = self.run_.total if first <= self.run_.total else first - 1
        return {"step": last_step, "preempted": False, **self.last}

    def compiled(self, step: int, state, start: float) -> None:
        jax.block_until_ready(state)
        self.console.say(f"step {step}: compiled and ran in {time.perf_counter() - start:.1f} s")
        self.console.mark(step)  # the first step's time is compilation

    def preempt(self, step: int, state, saved: bool) -> dict:
        self.watchdog.phase(f"the checkpoint at step {step}")
        if not saved:
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
        speed = self.console.line(step, scalars)
        scalars.update(speed)
        if speed["train/images_per_s"] > 0:
            self.watchdog.pace = self.c.batch_size / speed["train/images_per_s"]
        scalars["train/epoch"] = step / self.run_.per_epoch
        self.writer.write_scalars(step, scalars)
        self.metrics, self.last = None, {**self.last, **scalars}

    def evaluate(self, step: int, state) -> None:
        self.watchdog.phase(f"the evaluation at step {step}")
        scalars = run_evaluators(self.evaluators, state)
        self.writer.write_scalars(step, scalars)
        shown = []
        for suffix in ("", "_ema"):
            for ev in self.evaluators:
                for m in ev.headline:
                    key = metric_key(ev.name, suffix, m)
                    if key in scalars:
                        shown.append(f"{key} {monitor.shown(scalars[key])}")
        self.console.say(f"step {step} eval: " + ", ".join(shown))
        self.last.update(scalars)
        self.console.mark(step)

    def save(self, step: int, state, evaluated: bool) -> None:
        self.watchdog.phase(f"the checkpoint at step {step}")
        check_finite(state, step, self.checkpoints)
        metrics = self.last if evaluated else None
        self.checkpoints.save(step, state, self.loader.get_state(), metrics)
        self.console.mark(step)
