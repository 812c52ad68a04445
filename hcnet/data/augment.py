"""Device-side training augmentation inside the jitted step: the timm recipe Swin and HcNet train
with.

RandAugment (hcnet.data.randaugment), normalisation, random erasing (pixel mode) and batch-mode
mixup/cutmix with label smoothing folded into the targets. Every example draws from its own key.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from hcnet.data.randaugment import RandAugment, randaugment
from hcnet.data.transforms import MEAN, STD

# --- after normalisation: random erasing, then batch-level mixing.


def normalize(x, mean=MEAN, std=STD):
    """[0, 255] -> (x / 255 - mean) / std, float32."""
    return (x.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def random_erase(
    key,
    x,
    prob: float = 0.25,
    area=(0.02, 1 / 3),
    log_aspect=(math.log(0.3), math.log(1 / 0.3)),
    attempts: int = 10,
):
    """timm RandomErasing, pixel mode, one box: with `prob`, the first of 10 random boxes that fits
    gets per-pixel N(0, 1) values (the image is already normalised)."""
    h, w = x.shape[:2]
    k_apply, k_area, k_aspect, k_top, k_left, k_noise = jax.random.split(key, 6)
    target = jax.random.uniform(k_area, (attempts,), minval=area[0], maxval=area[1]) * (h * w)
    aspect = jnp.exp(
        jax.random.uniform(k_aspect, (attempts,), minval=log_aspect[0], maxval=log_aspect[1])
    )
    eh, ew = jnp.round(jnp.sqrt(target * aspect)), jnp.round(jnp.sqrt(target / aspect))
    fits = (ew < w) & (eh < h)
    first = jnp.argmax(fits)
    eh, ew = eh[first].astype(jnp.int32), ew[first].astype(jnp.int32)
    top = jax.random.randint(k_top, (), 0, h - eh + 1)
    left = jax.random.randint(k_left, (), 0, w - ew + 1)
    rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
    box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    erase = box & fits.any() & (jax.random.uniform(k_apply) < prob)
    return jnp.where(erase, jax.random.normal(k_noise, x.shape, x.dtype), x)


def smooth_one_hot(labels, num_classes: int, smoothing: float):
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(key, lam, height: int, width: int):
    """timm's rand_bbox: a box of side sqrt(1 - lam) centred uniformly, clipped; (mask (H, W),
    corrected lam)."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (
        jnp.floor(height * ratio).astype(jnp.int32),
        jnp.floor(width * ratio).astype(jnp.int32),
    )
    k_y, k_x = jax.random.split(key)
    cy, cx = jax.random.randint(k_y, (), 0, height), jax.random.randint(k_x, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return box, 1.0 - ((y1 - y0) * (x1 - x0)) / (height * width)


def mix(
    key,
    x,
    labels,
    mask,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    smoothing: float = 0.1,
):
    """timm Mixup in batch mode: one lambda per batch, each example paired with the flipped batch.

    x (B, H, W, C), labels (B,), mask (B,) False for skipped examples (never mixed into others).
    Returns (x, targets (B, num_classes)) with label smoothing folded into the targets.
    """
    k_mix, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(key, 5)
    use_cutmix = (
        (jax.random.uniform(k_switch) < switch_prob)
        if mixup_alpha > 0 and cutmix_alpha > 0
        else jnp.asarray(cutmix_alpha > 0)
    )
    lam_mixup = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
    lam_cutmix = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
    enabled = (mixup_alpha > 0 or cutmix_alpha > 0) and prob > 0
    do_mix = (jax.random.uniform(k_mix) < prob) & enabled
    box, lam_box = cutmix_box(k_box, jnp.where(use_cutmix, lam_cutmix, 1.0), *x.shape[1:3])
    lam = jnp.where(do_mix, jnp.where(use_cutmix, lam_box, lam_mixup), 1.0)
    partner_ok = mask[::-1] & mask
    lam_i = jnp.where(partner_ok, lam, 1.0)  # (B,)
    flipped = x[::-1]
    mixed_up = lam_i[:, None, None, None] * x + (1.0 - lam_i[:, None, None, None]) * flipped
    cut = box[None, :, :, None] & (partner_ok & do_mix)[:, None, None, None]
    x = jnp.where(use_cutmix, jnp.where(cut, flipped, x), mixed_up)
    y = smooth_one_hot(labels, num_classes, smoothing)
    return x, lam_i[:, None] * y + (1.0 - lam_i[:, None]) * y[::-1]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What happens to a training batch on the device; every part can be switched off."""

    randaugment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1
    mean: tuple = MEAN
    std: tuple = STD
    lut_impl: str = (
        "auto"  # how RandAugment's lookup tables are applied (apply_lut): auto, gather, onehot
    )


def train_inputs(key, batch: dict, num_classes: int, recipe: Recipe = Recipe()):
    """uint8 batch {"image", "label", "mask"} -> (normalised images, soft targets (B,
    num_classes))."""
    k_ra, k_erase, k_mix = jax.random.split(key, 3)
    x = batch["image"]
    n = x.shape[0]
    if recipe.randaugment:
        ra = RandAugment.parse(recipe.randaugment)
        x = jax.vmap(lambda k, im: randaugment(k, im, ra, recipe.lut_impl))(
            jax.random.split(k_ra, n), x
        )
    x = normalize(x, recipe.mean, recipe.std)
    if recipe.reprob > 0:
        x = jax.vmap(lambda k, im: random_erase(k, im, recipe.reprob))(
            jax.random.split(k_erase, n), x
        )
    return mix(
        k_mix,
        x,
        batch["label"],
        batch["mask"],
        num_classes,
        recipe.mixup,
        recipe.cutmix,
        recipe.mix_prob,
        recipe.switch_prob,
        recipe.smoothing,
    )


def eval_inputs(batch: dict, recipe: Recipe = Recipe()):
    return normalize(batch["image"], recipe.mean, recipe.std)
