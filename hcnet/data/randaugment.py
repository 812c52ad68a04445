"""timm's RandAugment (`rand-m9-mstd0.5-inc1`, what Swin and HcNet train with) on the device, one
image at a time, inside the jitted step.

It works on integer-valued float images with PIL's semantics, each op within one grey level of
PIL's: colour ops are per-channel lookup tables (or PIL's blends for Color and Sharpness); the
geometric ops of an image compose into one affine map applied once at the end, as PIL's bilinear
affine transform (fill = the mean colour). Two deviations from timm: one interpolation instead of
one per geometric op (the fill colour is not recoloured by a later colour op), and bilinear where
Swin's timm config asks for bicubic.
"""

import dataclasses

import jax
import jax.numpy as jnp

from hcnet.data.transforms import MEAN

FILL = tuple(round(255 * m) for m in MEAN)  # (124, 116, 104): timm's fill for geometric ops
INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
ORIGINAL_OPS = tuple(op.replace("Increasing", "") for op in INCREASING_OPS)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_COLOR, _SHARPNESS = (
    INCREASING_OPS.index("ColorIncreasing"),
    INCREASING_OPS.index("SharpnessIncreasing"),
)


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment: `num_layers` ops drawn with replacement, each applied with `prob`."""

    num_layers: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    magnitude_max: float = 10.0
    prob: float = 0.5
    increasing: bool = True
    translate_pct: float = 0.45

    @property
    def ops(self) -> tuple:
        return INCREASING_OPS if self.increasing else ORIGINAL_OPS

    @classmethod
    def parse(cls, spec: str, field: str = "augment.randaugment") -> "RandAugment":
        """'rand-m9-mstd0.5-inc1' (timm's grammar: m, n, mstd, mmax, inc)."""
        parts = spec.split("-")
        keys = {
            "m": "magnitude",
            "n": "num_layers",
            "mstd": "magnitude_std",
            "mmax": "magnitude_max",
            "inc": "increasing",
        }
        kwargs = {}
        for part in parts[1:]:
            key = part.rstrip("0123456789.")
            try:
                value = float(part[len(key) :])
            except ValueError:
                key = None
            if key not in keys:
                break
            kwargs[keys[key]] = bool(value) if key == "inc" else int(value) if key == "n" else value
        else:
            if parts[0] == "rand":
                return cls(**kwargs)
        raise ValueError(
            f"{field}={spec!r} is not a RandAugment spec like 'rand-m9-mstd0.5-inc1' "
            f"(keys {', '.join(keys)})"
        )


# --- colour ops: per-channel lookup tables (3, 256) or PIL blends on integer-valued float images.


def _blend(degenerate, x, factor):
    """PIL's Image.blend on uint8: degenerate + f (x - degenerate), truncated, clipped."""
    return jnp.clip(jnp.trunc(degenerate + factor * (x - degenerate)), 0, 255)


def grayscale(x):
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, shape (H, W, 1)."""
    xi = x.astype(jnp.int32)
    return ((xi[..., :1] * 19595 + xi[..., 1:2] * 38470 + xi[..., 2:] * 7471 + 32768) >> 16).astype(
        x.dtype
    )


def smooth(x):
    """PIL's ImageFilter.SMOOTH (3x3, centre 5, others 1, /13, rounded); the border is kept."""
    p = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
    h, w = x.shape[:2]
    s = sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) + 4 * x
    out = jnp.clip(jnp.floor(s / 13 + 0.5), 0, 255)
    inner = jnp.zeros((h, w, 1), bool).at[1:-1, 1:-1].set(True)
    return jnp.where(inner, out, x)


def histogram(x):
    """(3, 256) pixel counts per channel."""
    return jax.vmap(lambda c: jnp.bincount(c.ravel(), length=256))(
        jnp.moveaxis(x.astype(jnp.int32), -1, 0)
    )


def autocontrast_lut(hist):
    """PIL ImageOps.autocontrast (cutoff 0): stretch [lo, hi] of each channel to [0, 255]."""
    i = jnp.arange(256, dtype=jnp.float32)
    nz = hist > 0
    lo = jnp.argmax(nz, axis=-1)[:, None].astype(jnp.float32)
    hi = (255 - jnp.argmax(nz[:, ::-1], axis=-1))[:, None].astype(jnp.float32)
    scale = 255.0 / jnp.maximum(hi - lo, 1)
    lut = jnp.clip(jnp.trunc(i * scale - lo * scale), 0, 255)
    return jnp.where(hi > lo, lut, i)


def equalize_lut(hist):
    """PIL ImageOps.equalize: step = (pixels - last bin's count) // 255, lut = (step//2 + cdf) //
    step."""
    i = jnp.arange(256, dtype=jnp.int32)
    last = 255 - jnp.argmax(hist[:, ::-1] > 0, axis=-1)
    step = (hist.sum(-1) - jnp.take_along_axis(hist, last[:, None], -1)[:, 0]) // 255
    cdf = jnp.cumsum(hist, -1) - hist  # pixels below each bin
    safe = jnp.maximum(step, 1)[:, None]
    lut = jnp.minimum((safe // 2 + cdf) // safe, 255)
    keep = ((hist > 0).sum(-1) <= 1) | (step == 0)
    return jnp.where(keep[:, None], i, lut).astype(jnp.float32)


LUT_IMPLS = ("auto", "gather", "onehot")


def _lut_gather(x, lut):
    return jnp.take_along_axis(lut.T, x.astype(jnp.int32).reshape(-1, 3), axis=0).reshape(x.shape)


def _lut_onehot(x, lut):
    """The lookup as a contraction with the one-hot pixel values: no gather. Exact: each output sums
    one product with 1.0, at float32 precision (HIGHEST: the TPU's matrix unit otherwise rounds to
    bfloat16)."""
    onehot = jax.nn.one_hot(x.astype(jnp.int32), 256, dtype=lut.dtype)
    return jnp.einsum("hwck,ck->hwc", onehot, lut, precision=jax.lax.Precision.HIGHEST)


def apply_lut(x, lut, impl: str = "auto"):
    """x integer-valued (H, W, 3), lut (3, 256). impl: 'gather' indexes the tables per pixel (what
    CPUs and GPUs do fast), 'onehot' contracts one-hot pixels with them (what TPUs do fast: XLA's
    TPU cost analysis charges the gather thousands of times the bytes; BENCHMARKS.md); 'auto' is
    'onehot' on TPU and 'gather' elsewhere, chosen when the step is lowered for its devices."""
    if impl == "auto":
        return jax.lax.platform_dependent(x, lut, tpu=_lut_onehot, default=_lut_gather)
    return {"gather": _lut_gather, "onehot": _lut_onehot}[impl](x, lut)


def _luts(x, gray, level, sign, increasing: bool):
    """(15, 3, 256): the lookup table of each op at this level (identity for non-LUT ops)."""
    i = jnp.broadcast_to(jnp.arange(256, dtype=jnp.float32), (3, 256))
    hist = histogram(x)
    if increasing:
        bits = 4 - jnp.floor(level * 4)
        threshold = 256 - jnp.floor(level * 256)
        factor = jnp.maximum(0.1, 1.0 + sign * level * 0.9)
    else:
        bits = jnp.floor(level * 4)
        threshold = jnp.minimum(256, jnp.floor(level * 256))
        factor = level * 1.8 + 0.1
    shift = 2.0 ** (8 - jnp.minimum(bits, 8))
    posterize = jnp.floor(i / shift) * shift
    solarize = jnp.where(i < threshold, i, 255 - i)
    solarize_add = jnp.where(
        i < 128, jnp.minimum(i + jnp.minimum(128, jnp.floor(level * 110)), 255), i
    )
    mean = jnp.floor(gray.mean() + 0.5)
    tables = {
        "AutoContrast": autocontrast_lut(hist),
        "Equalize": equalize_lut(hist),
        "Invert": 255 - i,
        "PosterizeIncreasing": posterize,
        "SolarizeIncreasing": solarize,
        "SolarizeAdd": solarize_add,
        "ContrastIncreasing": _blend(mean, i, factor),
        "BrightnessIncreasing": _blend(0.0, i, factor),
    }
    return jnp.stack(
        [tables.get(op, i) for op in INCREASING_OPS]
    ), factor  # identity: blends and geometry


def _geometry(op, level, sign, height, width, translate_pct):
    """3x3 map from output to input continuous (x, y) coordinates (PIL's convention) for op."""
    angle = -jnp.deg2rad(sign * level * 30.0)
    c, s = jnp.cos(angle), jnp.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    rotate = jnp.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy], [0, 0, 1]])
    shear, shift = sign * level * 0.3, sign * level * translate_pct
    eye = jnp.eye(3)
    maps = {
        "Rotate": rotate,
        "ShearX": eye.at[0, 1].set(shear),
        "ShearY": eye.at[1, 0].set(shear),
        "TranslateXRel": eye.at[0, 2].set(shift * width),
        "TranslateYRel": eye.at[1, 2].set(shift * height),
    }
    return jnp.stack([maps.get(n, eye) for n in INCREASING_OPS])[op]


def warp(x, m, fill=FILL):
    """x (H, W, C) warped by the output->input map m (continuous coordinates) as PIL's bilinear
    affine transform does it: samples within half a pixel of the image interpolate with clamped
    edges, the rest get `fill`. Four taps per pixel, each gathering all channels of a pixel from
    channel-major planes (dm-pix's affine_transform, which interpolates over the channel axis too
    and has its edge a half pixel further in, is 60x slower on CPU for 224x224x3 images; gathering
    from the (H, W, 3) image, whose 3-wide minor axis the TPU pads to 128, costs 28x the bytes in
    XLA's TPU cost analysis).
    """
    h, w, c = x.shape
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32) + 0.5,
        jnp.arange(w, dtype=jnp.float32) + 0.5,
        indexing="ij",
    )
    xi = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - 0.5  # index coordinates of the input sample
    yi = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - 0.5
    inside = (xi >= -0.5) & (xi < w - 0.5) & (yi >= -0.5) & (yi < h - 0.5)
    x0, y0 = jnp.floor(xi), jnp.floor(yi)
    fx, fy = xi - x0, yi - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    planes = jnp.moveaxis(x, -1, 0)  # (C, H, W)

    def tap(yy, xx):
        return planes[:, jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)]

    out = (tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx) * (1 - fy) + (
        tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    ) * fy
    return jnp.where(inside[..., None], jnp.moveaxis(out, 0, -1), jnp.asarray(fill, x.dtype))


def apply_op(
    x,
    m,
    op,
    level,
    sign,
    increasing: bool = True,
    translate_pct: float = 0.45,
    lut_impl: str = "auto",
):
    """One RandAugment op (index into the op table) at level = magnitude / 10: (image, geometry)."""
    gray = grayscale(x)
    luts, factor = _luts(x, gray, level, sign, increasing)
    y = apply_lut(x, luts[op], lut_impl)
    degenerate = jnp.where(op == _COLOR, gray, smooth(x))
    y = jnp.where((op == _COLOR) | (op == _SHARPNESS), _blend(degenerate, x, factor), y)
    return y, m @ _geometry(op, level, sign, x.shape[0], x.shape[1], translate_pct)


def randaugment(key, x, ra: RandAugment, lut_impl: str = "auto"):
    """One image: uint8-valued (H, W, 3) -> float32 (H, W, 3) with integer values in [0, 255]."""
    x = x.astype(jnp.float32)
    m = jnp.eye(3)
    for k in jax.random.split(key, ra.num_layers):
        k_op, k_apply, k_mag, k_sign = jax.random.split(k, 4)
        op = jax.random.randint(k_op, (), 0, len(ra.ops))
        magnitude = ra.magnitude + ra.magnitude_std * jax.random.normal(k_mag)
        level = jnp.clip(magnitude, 0.0, ra.magnitude_max) / 10.0
        sign = jnp.where(jax.random.bernoulli(k_sign), -1.0, 1.0)
        y, m_op = apply_op(x, m, op, level, sign, ra.increasing, ra.translate_pct, lut_impl)
        apply = jax.random.uniform(k_apply) < ra.prob
        x, m = jnp.where(apply, y, x), jnp.where(apply, m_op, m)
    return jnp.clip(jnp.round(warp(x, m)), 0, 255)
