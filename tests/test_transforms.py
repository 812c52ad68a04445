"""Host transforms: torchvision's RandomResizedCrop, timm's eval resize + centre crop, awkward
files."""

import math

import images
import numpy as np
import pytest
from PIL import Image

from hcnet.data import transforms

BICUBIC = Image.Resampling.BICUBIC


def test_random_resized_crop_box_follows_torchvision():
    rng = np.random.default_rng(0)
    boxes = np.array([transforms.random_resized_crop(500, 375, rng) for _ in range(3000)])
    left, top, w, h = boxes.T
    assert (
        (left >= 0).all()
        and (top >= 0).all()
        and (left + w <= 500).all()
        and (top + h <= 375).all()
    )
    area, aspect = w * h / (500 * 375), w / h
    assert area.min() > 0.075 and aspect.min() > 0.74 and aspect.max() < 1.35
    assert (
        0.38 < area.mean() < 0.54
    )  # below uniform(0.08, 1)'s 0.54: big tries that do not fit are redrawn
    # a strip no box of ratio 3/4..4/3 fits: the fallback is the centre crop at the nearest ratio
    assert transforms.random_resized_crop(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)
    assert transforms.random_resized_crop(10, 1000, rng) == (0, (1000 - 13) // 2, 10, 13)


def test_train_image_is_the_bicubic_crop_and_flip():
    a = images.photo("chelsea")  # 300 x 451
    data = images.encode(a)
    full = dict(scale=(1.0, 1.0), ratio=(451 / 300, 451 / 300), draft=False)
    out = transforms.train_image(data, 64, np.random.default_rng(0), hflip=0.0, **full)
    want = np.asarray(transforms.rgb(transforms.open_image(data)).resize((64, 64), BICUBIC))
    np.testing.assert_array_equal(out, want)
    flipped = transforms.train_image(data, 64, np.random.default_rng(0), hflip=1.0, **full)
    np.testing.assert_array_equal(flipped, want[:, ::-1])


def test_draft_decoding_of_a_large_jpeg_matches_full_decoding():
    a = images.photo("astronaut", (2048, 2048))
    data = images.encode(a)
    for seed in range(3):
        fast = transforms.train_image(data, 96, np.random.default_rng(seed), draft=True).astype(
            float
        )
        slow = transforms.train_image(data, 96, np.random.default_rng(seed), draft=False).astype(
            float
        )
        psnr = 10 * math.log10(255**2 / np.mean((fast - slow) ** 2))
        assert psnr > 30, psnr


@pytest.mark.parametrize("size, crop_pct", [(224, 0.875), (64, 0.9), (32, 1.0)])
def test_eval_image_is_resize_shorter_side_then_centre_crop(size, crop_pct):
    a = images.photo("coffee")  # 400 x 600
    data = images.encode(a)
    im = transforms.rgb(transforms.open_image(data))
    short = math.floor(size / crop_pct)
    resized = im.resize((int(short * 600 / 400), short), BICUBIC)
    left, top = int(round((resized.width - size) / 2)), int(round((resized.height - size) / 2))
    want = np.asarray(resized.crop((left, top, left + size, top + size))).astype(int)
    got = transforms.eval_image(data, size, crop_pct).astype(int)
    assert (
        got.shape == (size, size, 3)
        and np.abs(got - want).max() <= 2
        and np.abs(got - want).mean() < 0.1
    )


def test_awkward_files_decode_to_rgb_or_are_masked():
    t = transforms.TrainTransform(24)
    for name, (data, decodable) in images.bad_inputs().items():
        out = t({"image": data, "label": 3, "index": 11}, np.random.default_rng(0))
        assert out["image"].shape == (24, 24, 3) and out["image"].dtype == np.uint8, name
        assert bool(out["mask"]) == decodable and int(out["index"]) == 11, name
        assert int(out["label"]) == (3 if decodable else 0), name
    gray = transforms.eval_image(images.bad_inputs()["gray.JPEG"][0], 32)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    cmyk = transforms.eval_image(images.bad_inputs()["cmyk.JPEG"][0], 32, 1.0).astype(int)
    rgb = transforms.eval_image(images.encode(images.photo("coffee")), 32, 1.0).astype(int)
    assert np.abs(cmyk - rgb).mean() < 12  # CMYK converted back to roughly the same colours


def test_padding_records_are_zeros_with_mask_false():
    out = transforms.EvalTransform(16)({"index": transforms.PAD_INDEX})
    assert not out["mask"] and not out["image"].any() and int(out["index"]) == -1


@pytest.mark.parametrize(
    "width,height", [(47, 71), (90, 60), (20, 300), (300, 20), (36, 38), (512, 512)]
)
def test_the_savedmodels_tensorflow_crop_is_eval_image_pixel_for_pixel(width, height):
    """Pillow's fixed-point weights, float32 box and pass order (vertical first for some of these
    shapes)."""
    import tensorflow as tf

    from hcnet.serve.savedmodel import eval_crop

    im = images.photo("chelsea", (width, height))
    for size, crop_pct in ((32, 0.875), (24, 1.0), (40, 0.9)):
        got = eval_crop(tf.constant(np.stack([im, im[::-1]])), size, crop_pct).numpy()
        np.testing.assert_array_equal(
            got,
            np.stack(
                [
                    transforms.eval_image(im, size, crop_pct),
                    transforms.eval_image(im[::-1].copy(), size, crop_pct),
                ]
            ),
        )
