"""The optimiser: the reference's schedule, the linear scaling rule, decay mask and clipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcnet.optim import decay_mask, lr_schedule, make_optimizer, scale_lr


def timm_cosine(t, base, warmup_lr, min_lr, warmup, total):
    """timm's CosineLRScheduler(t_initial=total, warmup_t=warmup, warmup_prefix=False), per
    update."""
    if t < warmup:
        return warmup_lr + t * (base - warmup_lr) / warmup
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t / total))


def test_schedule_follows_the_reference_semantics():
    """Update n runs at timm's lr(n - 1): the reference steps its scheduler after each update."""
    kw = dict(base_lr=2e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=20, total_steps=300)
    schedule = lr_schedule(**kw)
    for n in [0, 1, 2, 10, 20, 21, 22, 150, 299, 300, 400]:
        want = timm_cosine(
            min(max(n - 1, 0), 300), kw["base_lr"], kw["warmup_lr"], kw["min_lr"], 20, 300
        )
        assert float(schedule(n)) == pytest.approx(want, rel=1e-5), n
    assert (
        float(schedule(0)) == float(schedule(1)) == pytest.approx(kw["warmup_lr"])
    )  # two updates at warmup_lr
    assert float(schedule(21)) == pytest.approx(timm_cosine(20, 2e-3, 1e-6, 1e-5, 20, 300))
    assert float(schedule(21)) < kw["base_lr"]  # the cosine runs from step 0, as in the reference
    assert float(schedule(299)) == pytest.approx(
        timm_cosine(298, 2e-3, 1e-6, 1e-5, 20, 300)
    )  # the last update


def test_linear_scaling_rule():
    assert scale_lr(1e-3, 1024) == pytest.approx(2e-3)
    assert scale_lr(5e-6, 1024, base_batch=256) == pytest.approx(2e-5)


def test_no_weight_decay_on_norms_biases_and_scalars():
    params = {
        "kernel": jnp.ones((3, 3)),
        "bias": jnp.ones(3),
        "scale": jnp.ones(3),
        "k": jnp.ones(()),
    }
    assert decay_mask(params) == {"kernel": True, "bias": False, "scale": False, "k": False}
    tx = make_optimizer(optax.constant_schedule(0.0), weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert all(
        float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates)
    )  # lr 0: nothing moves
    tx = optax.adamw(1.0, weight_decay=0.5, mask=decay_mask)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert (
        float(updates["kernel"][0, 0]) == pytest.approx(-0.5) and float(updates["bias"][0]) == 0.0
    )


def test_gradients_are_clipped_to_global_norm_5():
    """Two steps whose gradients differ in norm: Adam's moments see the clipped gradients."""
    params = {"w": jnp.zeros((4, 4))}
    grads = [{"w": jnp.full((4, 4), 100.0)}, {"w": jnp.full((4, 4), 0.5)}]
    kw = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)

    def run(tx):
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(u["w"])
        return out

    ours = run(make_optimizer(optax.constant_schedule(1.0), **kw))
    clipped = run(optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(1.0, **kw)))
    unclipped = run(optax.adamw(1.0, **kw))
    np.testing.assert_allclose(ours[1], clipped[1], rtol=1e-5)
    assert not np.allclose(ours[1], unclipped[1], rtol=1e-3)


def test_poly_schedule_is_mmcvs_with_linear_warmup():
    """mmcv's PolyLrUpdaterHook (power 1, min 0) with warmup='linear', warmup_ratio r, as Swin's
    ADE20K runs set it before each update from the updates done: lr(n) = base (1 - n / T), times 1 -
    (1 - n / W)(1 - r) for n < W."""
    from hcnet.optim import poly_schedule

    base, total, warm, ratio = 6e-5, 160_000, 1500, 1e-6
    f = poly_schedule(
        base_lr=base, warmup_lr=base * ratio, min_lr=0.0, warmup_steps=warm, total_steps=total
    )
    for n in (0, 1, 750, 1499, 1500, 80_000, 159_999, 160_000):
        poly = base * (1 - n / total)
        want = poly * (1 - (1 - n / warm) * (1 - ratio)) if n < warm else poly
        assert float(f(n)) == pytest.approx(want, rel=1e-5, abs=1e-12), n
    assert float(f(0)) == pytest.approx(
        base * ratio, rel=1e-5
    )  # no lag: update 0 runs at the warmup start
    squared = poly_schedule(
        base_lr=1.0, warmup_lr=1.0, min_lr=0.1, warmup_steps=0, total_steps=10, power=2.0
    )
    assert float(squared(5)) == pytest.approx(0.9 * 0.25 + 0.1)


def test_step_schedule_is_mmcvs_with_linear_warmup():
    """lr x 0.1 from each milestone on; the first 500 updates rise linearly from 0.001 x lr (mmcv's
    warmup_ratio) over the step schedule's value; set before each update from the updates done."""
    from hcnet import optim

    s = optim.step_schedule(
        base_lr=1e-4, warmup_lr=1e-7, warmup_steps=500, milestones=(800, 1100), gamma=0.1
    )
    np.testing.assert_allclose(float(s(0)), 1e-7, rtol=1e-5)
    np.testing.assert_allclose(float(s(250)), 1e-4 * (0.5 + 0.001 * 0.5), rtol=1e-5)
    for step, lr in ((500, 1e-4), (799, 1e-4), (800, 1e-5), (1099, 1e-5), (1100, 1e-6)):
        np.testing.assert_allclose(float(s(step)), lr, rtol=1e-5)
