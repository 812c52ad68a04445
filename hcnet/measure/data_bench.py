"""Input throughput: host decode + crop per core on real JPEGs, and the device augmentation's cost.

    python -m hcnet.tools.data_bench [--image_size=224] [--batch=32] [--variant=T] \\
        [--seconds=10] [--json]

The JPEGs are scikit-image's photographs resized to ImageNet-like sizes (shorter side 333-500,
aspect 3:4 to 16:9) and saved at quality 90. The device part times `augment.train_inputs`
(RandAugment, erasing, mixing) on a batch against one HcNet training step (forward, backward, AdamW)
on that batch.
"""

import io
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from hcnet.data import augment, transforms
from hcnet.measure.bench import median_seconds, train_step_seconds

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "cat",
)
SIZES = (
    (500, 375),
    (500, 333),
    (375, 500),
    (500, 500),
    (640, 480),
    (600, 400),
    (480, 360),
    (500, 281),
)


def imagenet_like_jpegs() -> list:
    import skimage.data

    out = []
    for i, name in enumerate(PHOTOS):
        a = getattr(skimage.data, name)()
        a = a[..., :3] if a.ndim == 3 else np.stack([a] * 3, -1)
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.uint8)).resize(
            SIZES[i % len(SIZES)], Image.Resampling.BICUBIC
        ).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def host_rate(fn, jpegs, seconds: float) -> float:
    """Images per second of fn(jpeg, i) on one core (this thread), after one warm pass."""
    for i, j in enumerate(jpegs):
        fn(j, i)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for j in jpegs:
            fn(j, n)
            n += 1
    return n / (time.perf_counter() - start)


def device_costs(batch: int, image_size: int, variant: str, repeats: int) -> dict:
    """Seconds per batch of the device augmentation and of one HcNet training step, on one
    device."""
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(
            rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
        ),
        "label": jnp.asarray(rng.integers(0, 1000, batch)),
        "mask": jnp.ones(batch, bool),
    }
    aug = jax.jit(lambda key, b: augment.train_inputs(key, b, 1000))
    aug_s, _ = median_seconds(aug, (jax.random.key(0), data), repeats)

    step_s = train_step_seconds(variant, batch, image_size, repeats, devices=1)
    return {
        "augment_s": aug_s,
        "step_s": step_s,
        "augment_share": aug_s / step_s,
        "device": str(jax.devices()[0].device_kind),
        "batch": batch,
        "variant": variant,
    }


def host_rates(image_size: int, seconds: float) -> dict:
    """Images per second on one core: training decode + crop + flip (with and without DCT-scaled
    decoding) and evaluation resize + centre crop."""
    jpegs = imagenet_like_jpegs()
    train = transforms.TrainTransform(image_size)
    return {
        "train_images_per_s_per_core": host_rate(
            lambda j, i: train({"image": j, "label": 0, "index": i}, np.random.default_rng(i)),
            jpegs,
            seconds,
        ),
        "train_no_draft_images_per_s_per_core": host_rate(
            lambda j, i: transforms.train_image(
                j, image_size, np.random.default_rng(i), draft=False
            ),
            jpegs,
            seconds,
        ),
        "eval_images_per_s_per_core": host_rate(
            lambda j, i: transforms.eval_image(j, image_size), jpegs, seconds
        ),
        "image_size": image_size,
    }
