"""Device-side augmentation against PIL/timm semantics on real photographs, and its statistics."""

import math

import images
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from hcnet import sharding
from hcnet.data import augment as A
from hcnet.data import randaugment as R

BILINEAR = Image.Resampling.BILINEAR
COLOUR = [op for op in R.INCREASING_OPS if op not in R.GEOMETRIC]


def timm_op(img: Image.Image, name: str, level: float, sign: float) -> Image.Image:
    """timm's RandAugment op at magnitude 10 * level on a PIL image (bilinear for geometric ops)."""
    factor = max(0.1, 1.0 + sign * level * 0.9)
    s, (w, h) = sign * level, img.size
    if name == "PosterizeIncreasing":
        bits = 4 - int(
            level * 4
        )  # Pillow 13 refuses bits=0, which older Pillow (and timm) turned black
        return img.point(lambda i: 0) if bits == 0 else ImageOps.posterize(img, bits)
    if name == "SolarizeAdd":
        add = min(128, int(level * 110))
        return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
    ops = {
        "AutoContrast": lambda: ImageOps.autocontrast(img),
        "Equalize": lambda: ImageOps.equalize(img),
        "Invert": lambda: ImageOps.invert(img),
        "SolarizeIncreasing": lambda: ImageOps.solarize(img, 256 - int(level * 256)),
        "ColorIncreasing": lambda: ImageEnhance.Color(img).enhance(factor),
        "ContrastIncreasing": lambda: ImageEnhance.Contrast(img).enhance(factor),
        "BrightnessIncreasing": lambda: ImageEnhance.Brightness(img).enhance(factor),
        "SharpnessIncreasing": lambda: ImageEnhance.Sharpness(img).enhance(factor),
        "Rotate": lambda: img.rotate(s * 30, resample=BILINEAR, fillcolor=R.FILL),
    }
    if name in ops:
        return ops[name]()
    affine = {
        "ShearX": (1, s * 0.3, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, s * 0.3, 1, 0),
        "TranslateXRel": (1, 0, s * 0.45 * w, 0, 1, 0),
        "TranslateYRel": (1, 0, 0, 0, 1, s * 0.45 * h),
    }[name]
    return img.transform(
        img.size, Image.Transform.AFFINE, affine, resample=BILINEAR, fillcolor=R.FILL
    )


@jax.jit
def one_op(x, op, level, sign):
    y, m = R.apply_op(x.astype(jnp.float32), jnp.eye(3), op, level, sign)
    return jnp.clip(jnp.round(R.warp(y, m)), 0, 255)


@pytest.fixture(scope="module")
def photos():
    return [images.photo(p, (96, 72)) for p in ("astronaut", "coffee", "chelsea")]


@pytest.mark.parametrize("name", R.INCREASING_OPS)
def test_each_randaugment_op_matches_pil(photos, name):
    """Within 1 grey level everywhere (rounding), colour and geometric ops alike."""
    op = R.INCREASING_OPS.index(name)
    for a in photos:
        for level, sign in ((0.9, 1.0), (0.55, -1.0), (1.0, 1.0)):
            want = np.asarray(timm_op(Image.fromarray(a), name, level, sign)).astype(int)
            got = np.asarray(one_op(jnp.asarray(a), op, level, sign)).astype(int)
            diff = np.abs(want - got)
            assert diff.max() <= 1, (name, level, diff.max())
            assert (diff == 0).mean() > (0.5 if name in R.GEOMETRIC else 0.999), (
                name,
                level,
                diff.mean(),
            )


def test_lookup_implementations_agree_exactly(photos):
    """The one-hot contraction TPUs get (lut_impl='onehot') gives the gather's values bit for bit:
    on every op's tables for real photographs, and on tables of arbitrary float32 values. (That the
    TPU keeps all 24 bits at HIGHEST precision is the compiler's contract, not checked here: this
    CPU's dots are float32 at any precision.)"""
    x = jnp.asarray(np.stack(photos), jnp.float32)
    luts = jax.vmap(lambda im: R._luts(im, R.grayscale(im), 0.7, 1.0, True)[0])(
        x
    )  # (3 photos, 15 ops, 3, 256)
    luts = jnp.concatenate(
        [luts, jax.random.uniform(jax.random.key(1), (3, 1, 3, 256), minval=-1e4, maxval=1e4)], 1
    )

    def apply(impl):
        return jax.jit(jax.vmap(jax.vmap(lambda im, lut: R.apply_lut(im, lut, impl), (None, 0))))

    gathered = np.asarray(apply("gather")(x, luts))
    np.testing.assert_array_equal(np.asarray(apply("onehot")(x, luts)), gathered)
    np.testing.assert_array_equal(
        np.asarray(apply("auto")(x, luts)), gathered
    )  # gather on this CPU
    assert not np.array_equal(
        gathered[:, -1], gathered[:, -2]
    )  # the random tables differ from Brightness's


def test_geometric_ops_compose_into_one_warp(photos):
    """Rotate then ShearX as one map: PIL's single transform by that map within one interpolation's
    error, and PIL's two transforms in a row within two interpolations' blur."""
    a = photos[0]
    m = R._geometry(R.INCREASING_OPS.index("Rotate"), 0.5, 1.0, 72, 96, 0.45) @ R._geometry(
        R.INCREASING_OPS.index("ShearX"), 0.5, 1.0, 72, 96, 0.45
    )
    got = np.asarray(jnp.round(R.warp(jnp.asarray(a, jnp.float32), m))).astype(int)
    once = Image.fromarray(a).transform(
        (96, 72),
        Image.Transform.AFFINE,
        tuple(np.asarray(m)[:2].ravel()),
        resample=BILINEAR,
        fillcolor=R.FILL,
    )
    assert np.abs(np.asarray(once).astype(int) - got).max() <= 1
    twice = timm_op(timm_op(Image.fromarray(a), "Rotate", 0.5, 1.0), "ShearX", 0.5, 1.0)
    diff = np.abs(np.asarray(twice).astype(int) - got)
    assert diff.mean() < 5 and np.median(diff) <= 1


def test_randaugment_statistics(photos):
    x = jnp.asarray(photos[1])
    ra = R.RandAugment.parse("rand-m9-mstd0.5-inc1")
    keys = jax.random.split(jax.random.key(0), 256)
    out = jax.jit(jax.vmap(lambda k: R.randaugment(k, x, ra)))(keys)
    out = np.asarray(out)
    assert out.min() >= 0 and out.max() <= 255 and np.array_equal(out, np.round(out))
    unchanged = np.all(out == np.asarray(x, np.float32), axis=(1, 2, 3)).mean()
    # both layers skipped: 1/4; plus the rare op that leaves this photo as it is
    assert 0.17 < unchanged < 0.40, unchanged
    assert len({o.tobytes() for o in out}) > 150
    again = jax.jit(lambda k: R.randaugment(k, x, ra))(keys[3])
    np.testing.assert_array_equal(np.asarray(again), out[3])


def test_randaugment_spec_grammar():
    ra = R.RandAugment.parse("rand-m7-n3-mstd0.25-mmax12-inc0")
    assert (ra.magnitude, ra.num_layers, ra.magnitude_std, ra.magnitude_max, ra.increasing) == (
        7,
        3,
        0.25,
        12,
        False,
    )
    assert ra.ops[4] == "Posterize"
    for bad in ("rand-x9", "augmix-m3", "rand-m"):
        with pytest.raises(
            ValueError, match="is not a RandAugment spec like 'rand-m9-mstd0.5-inc1'"
        ):
            R.RandAugment.parse(bad)


def test_random_erasing_probability_area_and_values():
    n, h, w = 2000, 32, 48
    x = jnp.full((h, w, 3), 7.0)
    out = np.asarray(
        jax.jit(jax.vmap(lambda k: A.random_erase(k, x, 0.25)))(
            jax.random.split(jax.random.key(1), n)
        )
    )
    erased = out != 7.0
    hit = erased.any(axis=(1, 2, 3))
    p = hit.mean()
    assert abs(p - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n), p
    area = erased[hit].all(-1).mean(axis=(1, 2))
    assert area.min() >= 0.015 and area.max() <= 1 / 3 + 0.03
    noise = out[erased]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02
    rows = erased[hit].any(axis=(2, 3))  # a box: its rows are contiguous
    assert all(np.ptp(np.flatnonzero(r)) + 1 == r.sum() for r in rows[:100])


def test_mixup_cutmix_statistics_and_targets():
    b, k = 8, 10
    x = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, 16, 20, 3))
    labels, mask = jnp.arange(b) % k, jnp.ones(b, bool)
    f = jax.jit(jax.vmap(lambda key: A.mix(key, x, labels, mask, k)))
    xs, ys = map(np.asarray, f(jax.random.split(jax.random.key(2), 4000)))
    np.testing.assert_allclose(ys.sum(-1), 1.0, atol=1e-5)
    assert ys.min() >= 0.1 / k - 1e-6
    own = (xs[:, 0] == 0).mean(axis=(1, 2, 3))  # share of example 0's own pixels (its partner is 7)
    mixed_pixels = ((xs[:, 0] != 0) & (xs[:, 0] != 7)).any(axis=(1, 2, 3))
    cutmix = ~mixed_pixels
    assert abs(cutmix.mean() - 0.5) < 0.04
    lam_target = (ys[:, 0, 0] - 0.1 / k) / 0.9  # label 0 is example 0's own class
    np.testing.assert_allclose(
        lam_target[cutmix], own[cutmix], atol=1e-5
    )  # cutmix: lam = pixel share
    lam_mixup = 1 - xs[~cutmix, 0, 0, 0, 0] / 7
    np.testing.assert_allclose(lam_target[~cutmix], lam_mixup, atol=1e-5)
    assert abs(lam_mixup.mean() - 0.5) < 0.02
    assert abs(lam_mixup.var() - 0.64 / (2.56 * 2.6)) < 0.01  # Beta(0.8, 0.8)


def test_a_masked_example_is_never_mixed_into_another():
    b, k = 4, 5
    x = jnp.broadcast_to(jnp.arange(1, b + 1, dtype=jnp.float32)[:, None, None, None], (b, 8, 8, 3))
    mask = jnp.array([True, True, True, False])
    for seed in range(20):
        xs, ys = A.mix(jax.random.key(seed), x, jnp.arange(b), mask, k)
        assert np.all(np.asarray(xs[0]) == 1.0)  # partner 3 is masked: example 0 stays itself
        np.testing.assert_allclose(
            np.asarray(ys[0]), np.asarray(A.smooth_one_hot(jnp.array(0), k, 0.1)), atol=1e-6
        )


def test_switches_turn_each_part_off():
    batch = {
        "image": jnp.asarray(np.stack([images.photo("coffee", (24, 16))] * 4)),
        "label": jnp.arange(4),
        "mask": jnp.ones(4, bool),
    }
    off = A.Recipe(randaugment=None, reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.0)
    x, y = A.train_inputs(jax.random.key(0), batch, 4, off)
    np.testing.assert_allclose(np.asarray(x), np.asarray(A.eval_inputs(batch)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(y), np.eye(4))


@pytest.mark.heavy
def test_train_inputs_on_a_sharded_batch_match_one_device():
    mesh = sharding.make_mesh()
    s = sharding.batch_sharding(mesh)
    imgs = np.stack([images.photo(p, (24, 16)) for p in images.PHOTOS] * 2)[:8]
    batch = {"image": imgs, "label": np.arange(8), "mask": np.ones(8, bool)}
    f = jax.jit(lambda key, b: A.train_inputs(key, b, 10))
    want = f(jax.random.key(4), batch)
    got = f(jax.random.key(4), jax.device_put(batch, s))
    assert got[0].sharding.spec == s.spec or len(got[0].sharding.device_set) == 8
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(w), np.asarray(g), atol=1e-5)
