"""Input throughput: host decode + crop per core on real JPEGs, and the device augmentation's cost.

    python -m hcnet.data.bench [--image-size=224] [--batch=32] [--model=T] [--seconds=10] [--json]

The JPEGs are scikit-image's photographs resized to ImageNet-like sizes (shorter side 333-500, aspect
3:4 to 16:9) and saved at quality 90. The device part times `augment.train_inputs` (RandAugment,
erasing, mixing) on a batch against one HcNet training step (forward, backward, AdamW) on that batch.
"""
import argparse
import io
import json
import time

import numpy as np
from PIL import Image

from hcnet.data import transforms

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel", "cat")
SIZES = ((500, 375), (500, 333), (375, 500), (500, 500), (640, 480), (600, 400), (480, 360), (500, 281))


def imagenet_like_jpegs() -> list:
    import skimage.data
    out = []
    for i, name in enumerate(PHOTOS):
        a = getattr(skimage.data, name)()
        a = a[..., :3] if a.ndim == 3 else np.stack([a] * 3, -1)
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.uint8)).resize(SIZES[i % len(SIZES)], Image.Resampling.BICUBIC).save(
            buf, "JPEG", quality=90)
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


def device_costs(batch: int, image_size: int, model: str, repeats: int) -> dict:
    """Seconds per batch of the device augmentation and of one HcNet training step, on one device."""
    import jax
    import jax.numpy as jnp

    from hcnet.bench import _median_run, train_step_seconds
    from hcnet.data import augment

    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, 1000, batch)), "mask": jnp.ones(batch, bool)}
    aug = jax.jit(lambda key, b: augment.train_inputs(key, b, 1000))
    aug_s, _ = _median_run(aug, (jax.random.key(0), data), repeats)

    step_s = train_step_seconds(model, batch, image_size, repeats, devices=1)
    return {"augment_s": aug_s, "step_s": step_s, "augment_share": aug_s / step_s,
            "device": str(jax.devices()[0].device_kind), "batch": batch, "model": model}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=10.0, help="per host measurement")
    p.add_argument("--batch", type=int, default=32, help="device part: batch size")
    p.add_argument("--model", default="T", help="device part: HcNet variant")
    p.add_argument("--repeats", type=int, default=3, help="device part: timed repeats (median)")
    p.add_argument("--no-device", action="store_true", help="host part only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    jpegs = imagenet_like_jpegs()
    size = args.image_size
    train = transforms.TrainTransform(size)
    result = {
        "train_images_per_s_per_core": host_rate(
            lambda j, i: train({"image": j, "label": 0, "index": i}, np.random.default_rng(i)),
            jpegs, args.seconds),
        "train_no_draft_images_per_s_per_core": host_rate(
            lambda j, i: transforms.train_image(j, size, np.random.default_rng(i), draft=False), jpegs, args.seconds),
        "eval_images_per_s_per_core": host_rate(lambda j, i: transforms.eval_image(j, size), jpegs, args.seconds),
        "image_size": size,
    }
    if not args.no_device:
        result.update(device_costs(args.batch, size, args.model, args.repeats))
    if args.json:
        print(json.dumps(result))
        return
    print(f"host, one core, {size}px from ImageNet-sized JPEGs (decode + RandomResizedCrop + flip): "
          f"{result['train_images_per_s_per_core']:.0f} images/s "
          f"({result['train_no_draft_images_per_s_per_core']:.0f} without DCT-scaled decoding); "
          f"eval resize + centre crop: {result['eval_images_per_s_per_core']:.0f} images/s")
    if not args.no_device:
        print(f"device ({result['device']}), batch {args.batch}: augmentation {result['augment_s'] * 1e3:.1f} ms, "
              f"HcNet-{args.model} training step {result['step_s'] * 1e3:.1f} ms: "
              f"augmentation = {100 * result['augment_share']:.1f}% of a step")


if __name__ == "__main__":
    from hcnet import hostenv
    hostenv.reexec_on_cpu()  # the training step it times runs as train.py would; see hcnet/hostenv.py
    main()
