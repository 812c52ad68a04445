"""AdamW with the reference recipe: linear warmup, per-step cosine, no decay on norms and biases.

The schedule is timm's CosineLRScheduler as the reference builds it (t_initial = all steps, no
warmup prefix): lr(t) = min + (base - min) (1 + cos(pi t / T)) / 2, and for t < warmup
warmup_lr + t (base - warmup_lr) / warmup. The reference sets lr(t) after update t (its
`step_update(t)` follows `optimizer.step()`), so update n runs at lr(n - 1): updates 0 and 1 both at
warmup_lr, the last (n = T - 1) at lr(T - 2). `lr_schedule` gives exactly that. Learning rates scale
linearly with the global batch over 512, as the reference's main.py does (its batch counts
accumulated micro-batches too).

For fine-tuning, two options wrap the optimizer (both off by default): layer-wise lr decay (BEiT /
ConvNeXt style: the lr of layer i of L is scaled by decay^(L + 1 - i); stem 0, blocks 1..L in order,
a stage's downsampling counted with the block after it, final norm and head L + 1), and `trainable`,
a pattern of parameter paths that train while the rest stay as loaded (a linear probe: "^head/").

`schedule="poly"` is mmcv's PolyLrUpdaterHook with linear warmup, as Swin's and the paper's ADE20K
UperNet runs use it: update n (0, 1, ...) runs at lr(n) = (base - min) (1 - n / T)^power + min, and
during warmup at that lr times 1 - (1 - n / warmup)(1 - warmup_lr / base) (mmcv's warmup_ratio is
warmup_lr / base); mmcv sets the lr before each update from the updates done, so no step lag.
"""

import re

import jax
import jax.numpy as jnp
import optax

from hcnet.errors import ConfigError


def scale_lr(lr: float, global_batch: int, base_batch: int = 512) -> float:
    """The linear scaling rule: lr * global_batch / base_batch (global_batch counts every
    micro-batch)."""
    return lr * global_batch / base_batch


def lr_schedule(
    *, base_lr: float, warmup_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    """The lr of update `step` (0, 1, ...): timm's lr(max(step - 1, 0)), as the reference applies
    it."""

    def schedule(step):
        t = jnp.maximum(jnp.asarray(step, jnp.float32) - 1.0, 0.0)  # set after the previous update
        # (1 + cos a) / 2 as cos(a / 2)^2: no cancellation in float32 near the end
        cosine = (
            min_lr
            + (base_lr - min_lr)
            * jnp.cos(0.5 * jnp.pi * jnp.minimum(t, total_steps) / total_steps) ** 2
        )
        if warmup_steps == 0:
            return cosine
        warm = warmup_lr + t * (base_lr - warmup_lr) / warmup_steps
        return jnp.where(t < warmup_steps, warm, cosine)

    return schedule


def poly_schedule(
    *,
    base_lr: float,
    warmup_lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
) -> optax.Schedule:
    """mmcv's poly decay with linear warmup: the lr of update `step` (0, 1, ...)."""
    ratio = warmup_lr / base_lr if base_lr else 1.0

    def schedule(step):
        t = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
        poly = (base_lr - min_lr) * (1.0 - t / total_steps) ** power + min_lr
        if warmup_steps == 0:
            return poly
        a = (
            t / warmup_steps
        )  # 1 - (1 - a)(1 - ratio) written without the cancellation near a = 0 (float32)
        return jnp.where(t < warmup_steps, poly * (a + ratio * (1.0 - a)), poly)

    return schedule


def step_schedule(
    *, base_lr: float, warmup_lr: float, warmup_steps: int, milestones, gamma: float
) -> optax.Schedule:
    """mmcv's StepLrUpdaterHook with linear warmup (mmdet's detection schedules): lr x gamma at each
    milestone passed (in updates), and over the first warmup_steps updates from warmup_lr / lr of
    it up to all of it, set before each update from the updates done."""
    ratio = warmup_lr / base_lr if base_lr else 1.0
    milestones = jnp.asarray(sorted(milestones), jnp.float32)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        lr = base_lr * gamma ** jnp.sum(t >= milestones)
        if warmup_steps == 0:
            return lr
        a = t / warmup_steps
        return jnp.where(t < warmup_steps, lr * (a + ratio * (1.0 - a)), lr)

    return schedule


SCHEDULES = ("cosine", "poly", "step")


def decay_mask(params):
    """Weight decay only on parameters of two or more dimensions (not on norms, biases or k)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float = 0.05,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float | None = 5.0,
) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on `schedule` (steps count optimizer updates).

    Gradient accumulation happens inside the training step (hcnet.program.train_step), so one
    update always sees one whole global batch.
    """
    return optax.chain(
        optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )


def path_name(path) -> str:
    """'stages/2/blocks/1/ra/fc1/kernel' for a parameter's tree path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def layer_id(name: str, depths) -> int:
    """The layer a parameter belongs to for layer-wise lr decay: stem 0, blocks 1..sum(depths) in
    order, a stage's downsampling with the next block, the final norm and the head sum(depths) + 1
    (a segmentation network's backbone counts as HcNet, its decoder heads as the head)."""
    name = name.removeprefix("backbone/")
    m = re.match(r"stages/(\d+)/(blocks/(\d+)|downsample)/", name)
    if name.startswith("stem/"):
        return 0
    if not m:
        return sum(depths) + 1
    stage = int(m[1])
    before = sum(depths[:stage])
    return before + int(m[3]) + 1 if m[3] is not None else before + depths[stage] + 1


def layer_decay(decay: float, depths) -> optax.GradientTransformation:
    """Scales each parameter's update by decay^(L + 1 - layer_id), L = sum(depths) (one optax.scale
    per layer)."""
    last = sum(depths) + 1

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: str(layer_id(path_name(p), depths)), params
        )

    return optax.multi_transform(
        {str(i): optax.scale(decay ** (last - i)) for i in range(last + 1)}, labels
    )


def only_trainable(tx: optax.GradientTransformation, pattern: str) -> optax.GradientTransformation:
    """`tx` for the parameters whose path matches `pattern` (re.search); the others never change."""

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "train" if re.search(pattern, path_name(p)) else "frozen", params
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def from_config(
    o, batch_size: int, total_steps: int, warmup_steps: int, depths=None, per_epoch: int = 1
):
    """(optimizer, its learning-rate schedule) from config.optim, the lrs scaled by batch_size /
    o.scale_by_batch. `depths`: the network's blocks per stage, for layer-wise lr decay
    (o.layer_decay < 1); `per_epoch`: updates an epoch, for the step schedule's milestones."""

    def scale(lr: float) -> float:
        return scale_lr(lr, batch_size, o.scale_by_batch) if o.scale_by_batch else lr

    if o.schedule not in SCHEDULES:
        raise ConfigError(f"config.optim.schedule={o.schedule!r}: one of {', '.join(SCHEDULES)}")
    if o.schedule == "step":
        schedule = step_schedule(
            base_lr=scale(o.lr),
            warmup_lr=scale(o.warmup_lr),
            warmup_steps=warmup_steps,
            milestones=[m * per_epoch for m in o.milestones],
            gamma=o.gamma,
        )
    else:
        extra = {"power": o.power} if o.schedule == "poly" else {}
        make = lr_schedule if o.schedule == "cosine" else poly_schedule
        schedule = make(
            base_lr=scale(o.lr),
            warmup_lr=scale(o.warmup_lr),
            min_lr=scale(o.min_lr),
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            **extra,
        )
    tx = make_optimizer(
        schedule,
        weight_decay=o.weight_decay,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        clip_norm=o.clip_norm or None,
    )
    if o.layer_decay < 1:
        if not depths:
            raise ConfigError(
                f"config.optim.layer_decay={o.layer_decay}: needs a network of stages and blocks "
                "(this task's spec has no depths); set it to 1"
            )
        tx = optax.chain(tx, layer_decay(o.layer_decay, tuple(depths)))
    if o.trainable:
        tx = only_trainable(tx, o.trainable)
    return tx, schedule
