"""Training and exact evaluation: the jitted steps and `train_and_evaluate(config, workdir)`.

The train state is a dict of plain pytrees: `params` (and `ema`) as nnx.to_pure_dict gives them,
`opt` (optax state), `step` (updates done) and `bad` (the first step whose loss or gradient was not
finite, -1 if none). A non-finite step leaves parameters and optimizer state as they were, so the
state is never broken; the loop stops at the next log or checkpoint step, naming the step.
Randomness is a function of (seed, step) alone, so a resumed run repeats an uninterrupted one bit
for bit on the same devices.
"""
import dataclasses
import functools
import signal
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from flax import nnx

from hcnet import config as config_lib
from hcnet import report, sharding
from hcnet.data import augment, pipeline, sources
from hcnet.model import build
from hcnet.optim import lr_schedule, make_optimizer, scale_lr
from hcnet.workdir import Checkpoints, write_run_files


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    grad_norm: clu_metrics.Average.from_output("grad_norm")
    lr: clu_metrics.LastValue.from_output("lr")


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    top1: clu_metrics.Average.from_output("top1")
    top5: clu_metrics.Average.from_output("top5")


@dataclasses.dataclass(frozen=True)
class Model:
    """What a step needs to rebuild the network from its parameters (hashable, static under jit)."""
    graphdef: nnx.GraphDef
    rngs: object  # abstract RNG-stream state (keys and counts) of the dropout and drop-path layers

    @classmethod
    def abstract(cls, spec: dict):
        graphdef, params, rngs = nnx.split(nnx.eval_shape(lambda: build(spec, rngs=nnx.Rngs(0))), nnx.Param, ...)
        return cls(graphdef, rngs), nnx.to_pure_dict(params)

    def __hash__(self):
        return hash(self.graphdef)

    def __call__(self, params, key=None):
        """The network with `params`; its drop-path streams seeded from `key` (None: eval mode)."""
        leaves, tree = jax.tree.flatten(self.rngs)
        key = jax.random.key(0) if key is None else key
        fresh = [jax.random.fold_in(key, i) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                 else jnp.zeros(x.shape, x.dtype) for i, x in enumerate(leaves)]
        return nnx.merge(self.graphdef, params, jax.tree.unflatten(tree, fresh))


def init_state(model: Model, tx, seed: int, spec: dict, ema: bool) -> dict:
    params = nnx.to_pure_dict(nnx.state(build(spec, rngs=nnx.Rngs(params=seed, dropout=0)), nnx.Param))
    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "bad": jnp.full((), -1, jnp.int32)}
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def train_step(state, batch, key, *, model: Model, tx, schedule, recipe, num_classes: int, accum: int,
               ema_decay: float):
    """One optimizer update from one global batch of uint8 images -> (state, TrainMetrics)."""
    key = jax.random.fold_in(key, state["step"])
    k_aug, k_drop = jax.random.split(key)
    images, targets = augment.train_inputs(k_aug, batch, num_classes, recipe)
    mask = batch["mask"].astype(jnp.float32)
    valid = jnp.maximum(mask.sum(), 1.0)

    def loss_fn(params, x, t, m, k):
        logits = model(params, k)(x)
        return jnp.sum(optax.softmax_cross_entropy(logits, t) * m) / valid

    grad_fn = jax.value_and_grad(loss_fn)
    params = state["params"]
    if accum == 1:
        loss, grads = grad_fn(params, images, targets, mask, k_drop)
    else:  # micro-batch i takes rows i, i + accum, ...: every device keeps its share of each
        split = lambda a: a.reshape(a.shape[0] // accum, accum, *a.shape[1:])
        parts = (split(images), split(targets), split(mask))

        def micro(carry, i):
            x, t, m = (jax.lax.dynamic_index_in_dim(a, i, 1, keepdims=False) for a in parts)
            loss_i, grads_i = grad_fn(params, x, t, m, jax.random.fold_in(k_drop, i))
            return jax.tree.map(jnp.add, carry, (loss_i, grads_i)), None
        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(micro, zero, jnp.arange(accum))

    grad_norm = optax.tree.norm(grads)
    updates, opt = tx.update(grads, state["opt"], params)
    new_params = optax.apply_updates(params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state["bad"] < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    step = state["step"] + 1
    new = {"params": keep(new_params, params), "opt": keep(opt, state["opt"]), "step": step,
           "bad": jnp.where(ok | (state["bad"] >= 0), state["bad"], step)}
    if "ema" in state:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], new_params)
        new["ema"] = keep(ema, state["ema"])
    metrics = TrainMetrics.single_from_model_output(loss=loss, grad_norm=grad_norm, lr=schedule(state["step"]))
    return new, metrics


def eval_step(params, batch, *, model: Model, recipe):
    """Masked top-1, top-5 and loss of one global batch (padding rows have mask False)."""
    logits = nnx.view(model(params), deterministic=True)(augment.eval_inputs(batch, recipe))
    labels = batch["label"]
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hits = top == labels[:, None]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return EvalMetrics.single_from_model_output(loss=loss, top1=hits[:, 0], top5=hits.any(-1), mask=batch["mask"])


def host(tree):
    """Replicated device values as numpy, on any number of processes."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def evaluate(step_fn, params, loader) -> dict:
    """Exact metrics over one pass of an eval loader, with the number of examples counted."""
    total = None
    for batch in loader:
        m = step_fn(params, batch)
        total = m if total is None else total.merge(m)
    total = host(total)
    return {**{k: float(v) for k, v in total.compute().items()}, "count": int(round(float(total.top1.count)))}


class Stop:
    """SIGTERM (one process) or a preemption notice (JAX's sync point on several): save and leave."""

    def __init__(self, checkpoints: Checkpoints):
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


def _open_data(c):
    d = c.dataset
    data_dir = d.data_dir or None
    train = sources.open_split(d.name, d.train_split, data_dir=data_dir, num_classes=d.num_classes,
                               image_size=d.image_size, field="dataset.train_split")
    evals = sources.open_split(d.name, d.eval_split, data_dir=data_dir, num_classes=d.num_classes,
                               image_size=d.image_size, field="dataset.eval_split")
    if train.num_classes != d.num_classes:
        raise config_lib.ConfigError(f"config.dataset.num_classes={d.num_classes}: {d.name} has "
                                     f"{train.num_classes} classes; set it to {train.num_classes}")
    return train, evals


def _check_finite(state, step: int, checkpoints: Checkpoints):
    bad = int(host(state["bad"]))
    if bad >= 0:
        checkpoints.wait()
        last = checkpoints.steps()
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad} (stopped at step {step}); the last good checkpoint is "
            f"{'step %d in %s' % (last[-1], checkpoints.directory) if last else 'none'}; lower config.optim.lr "
            "or check the data")


def train_and_evaluate(c, workdir) -> dict:
    """Trains (resuming from workdir's newest checkpoint), evaluates, checkpoints; returns the last metrics."""
    config_lib.validate(c, jax.device_count())
    train_src, eval_src = _open_data(c)
    total, warmup, per_epoch = config_lib.steps(c, len(train_src))
    spec = config_lib.model_spec(c)
    o, d = c.optim, c.dataset
    scale = (lambda lr: scale_lr(lr, c.batch_size, base_batch=o.scale_by_batch)) if o.scale_by_batch else (lambda lr: lr)
    lrs = dict(warmup_lr=scale(o.warmup_lr), min_lr=scale(o.min_lr), warmup_steps=warmup, total_steps=total)
    tx = make_optimizer(lr=scale(o.lr), **lrs, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                        clip_norm=o.clip_norm or None)
    schedule = lr_schedule(base_lr=scale(o.lr), **lrs)  # the same schedule, for the lr metric
    recipe = augment.Recipe(randaugment=c.augment.randaugment or None, reprob=c.augment.reprob,
                            mixup=c.augment.mixup, cutmix=c.augment.cutmix, mix_prob=c.augment.mix_prob,
                            switch_prob=c.augment.switch_prob, smoothing=c.augment.smoothing)

    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp)
    model, abstract_params = Model.abstract(spec)
    init = functools.partial(init_state, model, tx, c.seed, spec, o.ema_decay > 0)
    abstract_state = jax.eval_shape(init)
    state_sh = sharding.state_shardings(mesh, abstract_state, c.mesh.fsdp_min_size)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)

    write_run_files(workdir, c, spec)
    checkpoints = Checkpoints(workdir, keep=c.keep_checkpoints, async_save=c.checkpoint_async)
    console = report.Console(total, per_epoch, c.batch_size)
    targets = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh)
    restored = checkpoints.restore(targets)
    if restored:
        start, state, data_state = restored
        console.say(f"resumed from {checkpoints.directory}/{start}"
                    + (f": the run is complete ({total} steps)" if start >= total else ""))
    else:
        start, data_state = 0, None
        state = jax.jit(init, out_shardings=state_sh)()

    loader_kw = dict(image_size=d.image_size, threads=d.threads, workers=d.workers)
    train_loader = pipeline.train_loader(
        train_src, batch_sh, c.batch_size, state=data_state, prefetch=d.prefetch, seed=c.seed, scale=tuple(d.scale),
        ratio=tuple(d.ratio), hflip=d.hflip, draft=d.draft, **loader_kw)
    eval_batch = c.eval_batch_size or c.batch_size
    eval_loader = lambda: pipeline.eval_loader(eval_src, batch_sh, eval_batch, prefetch=d.prefetch,
                                               crop_pct=d.crop_pct, **loader_kw)
    step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, recipe=recipe,
                                        num_classes=d.num_classes, accum=o.accum_steps, ema_decay=o.ema_decay),
                      in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, model=model, recipe=recipe),
                      in_shardings=(state_sh["params"], batch_sh), out_shardings=repl)
    key = jax.jit(lambda: jax.random.key(c.seed), out_shardings=repl)()

    writer = report.create_writer(workdir)
    stop = Stop(checkpoints)
    profile = tuple(c.profile_steps)
    acc, last, step = None, {}, start
    try:
        for step in range(start + 1, total + 1):
            if step == profile[0] + 1 and profile[1] > profile[0]:
                jax.profiler.start_trace(f"{workdir}/profile")
            t = time.perf_counter()
            batch = next(train_loader)
            console.waited(time.perf_counter() - t)
            state, metrics = step_fn(state, batch, key)
            acc = metrics if acc is None else acc.merge(metrics)
            if step == profile[1] and profile[1] > profile[0]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
            console.progress(step)
            if step == start + 1:
                jax.block_until_ready(state)
                console.say(f"step {step}: compiled and ran in {time.perf_counter() - t:.1f} s")
                console.mark(step)  # the first step's time is compilation
            if stop(step):
                _check_finite(state, step, checkpoints)
                checkpoints.save(step, state, train_loader.get_state())
                checkpoints.wait()
                console.say(f"stopping at step {step} on SIGTERM / preemption: checkpoint saved in "
                            f"{checkpoints.directory}/{step}; the same command resumes")
                return {"step": step, "preempted": True, **last}
            if step % c.log_every_steps == 0 or step == total:
                _check_finite(state, step, checkpoints)
                scalars = {f"train/{k}": float(v) for k, v in host(acc).compute().items()}
                scalars.update(console.line(step, scalars), **{"train/epoch": step / per_epoch})
                writer.write_scalars(step, scalars)
                acc, last = None, {**last, **scalars}
            if (c.eval_every_steps and step % c.eval_every_steps == 0) or step == total:
                scalars = _evaluate(eval_fn, state, eval_loader)
                writer.write_scalars(step, scalars)
                console.say(f"step {step} eval: " + ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()
                                                                if k.endswith(("top1", "top5"))))
                last.update(scalars)
                console.mark(step)
            if (c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0) or step == total:
                _check_finite(state, step, checkpoints)
                checkpoints.save(step, state, train_loader.get_state(),
                                 last if (c.eval_every_steps and step % c.eval_every_steps == 0) or step == total
                                 else None)
                console.mark(step)
        checkpoints.wait()  # the last step always logs, so it was checked for non-finite values there
        return {"step": step, "preempted": False, **last}
    finally:
        stop.restore()
        writer.close()
        checkpoints.close()


def _evaluate(eval_fn, state, make_loader) -> dict:
    out = {f"eval/{k}": v for k, v in evaluate(eval_fn, state["params"], make_loader()).items()}
    if "ema" in state:
        out.update({f"eval_ema/{k}": v for k, v in evaluate(eval_fn, state["ema"], make_loader()).items()})
    return out
