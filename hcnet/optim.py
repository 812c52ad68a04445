"""AdamW with the reference recipe: linear warmup, per-step cosine, no decay on norms and biases.

The schedule is timm's CosineLRScheduler as the reference builds it (t_initial = all steps, no
warmup prefix): lr(t) = min + (base - min) (1 + cos(pi t / T)) / 2, and for t < warmup
warmup_lr + t (base - warmup_lr) / warmup. The reference sets lr(t) after update t (its
`step_update(t)` follows `optimizer.step()`), so update n runs at lr(n - 1): updates 0 and 1 both at
warmup_lr, the last (n = T - 1) at lr(T - 2). `lr_schedule` gives exactly that. Learning rates scale
linearly with the global batch over 512, as the reference's main.py does (its batch counts
accumulated micro-batches too).
"""
import jax
import jax.numpy as jnp
import optax


def scale_lr(lr: float, global_batch: int, base_batch: int = 512) -> float:
    """The linear scaling rule: lr * global_batch / base_batch (global_batch counts every micro-batch)."""
    return lr * global_batch / base_batch


def lr_schedule(*, base_lr: float, warmup_lr: float, min_lr: float, warmup_steps: int,
                total_steps: int) -> optax.Schedule:
    """The lr of update `step` (0, 1, ...): timm's lr(max(step - 1, 0)), as the reference applies it."""
    def schedule(step):
        t = jnp.maximum(jnp.asarray(step, jnp.float32) - 1.0, 0.0)  # set after the previous update
        # (1 + cos a) / 2 as cos(a / 2)^2: no cancellation in float32 near the end
        cosine = min_lr + (base_lr - min_lr) * jnp.cos(0.5 * jnp.pi * jnp.minimum(t, total_steps) / total_steps) ** 2
        if warmup_steps == 0:
            return cosine
        warm = warmup_lr + t * (base_lr - warmup_lr) / warmup_steps
        return jnp.where(t < warmup_steps, warm, cosine)
    return schedule


def decay_mask(params):
    """Weight decay only on parameters of two or more dimensions (not on norms, biases or k)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(schedule: optax.Schedule, *, weight_decay: float = 0.05, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, clip_norm: float | None = 5.0) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on `schedule` (steps count optimizer updates).

    Gradient accumulation happens inside the training step (hcnet.trainer.train_step), so one
    update always sees one whole global batch.
    """
    return optax.chain(
        optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )


def from_config(o, batch_size: int, total_steps: int, warmup_steps: int):
    """(optimizer, its learning-rate schedule) from config.optim, the lrs scaled by batch_size / o.scale_by_batch."""
    scale = (lambda lr: scale_lr(lr, batch_size, o.scale_by_batch)) if o.scale_by_batch else (lambda lr: lr)
    schedule = lr_schedule(base_lr=scale(o.lr), warmup_lr=scale(o.warmup_lr), min_lr=scale(o.min_lr),
                           warmup_steps=warmup_steps, total_steps=total_steps)
    tx = make_optimizer(schedule, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip_norm=o.clip_norm or None)
    return tx, schedule
