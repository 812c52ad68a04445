"""The numbers behind hcnet.serve.visualize's figures, for one image at a time: k across depth, each
stage's mean ("temperature"), the features' radial power spectra and their high-frequency share, and
Grad-CAM at each stage's output. Pure functions of a model in evaluation mode and its features.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hcnet.data.augment import normalize
from hcnet.errors import UserError

HIGH = 0.25  # cycles per pixel: "high frequency" is the upper half of the band up to Nyquist


def trace(model, x) -> dict:
    """The forward pass kept block by block. x: normalised images (B, H, W, 3); model in eval mode.

    The values are the model's own method outputs, captured (nnx.capture): k per block (B, C) (a
    scalar k broadcast); blocks: each block's output; stage_of_block: its stage; stem: the stem's
    output (after its dropout); stages: each stage's output (what model.features returns); logits.
    """
    logits, seen = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    out = nnx.to_pure_dict(seen)
    stem = out["stem_drop"]["__call__"][0]
    k, blocks, stage_of_block = [], [], []
    for s, stage in sorted(out["stages"].items()):
        for _, block in sorted(stage["blocks"].items()):
            conductivity = jnp.asarray(block["heat"]["conductivity"][0], jnp.float32)
            width = block["__call__"][0].shape[-1]
            k.append(
                jnp.broadcast_to(
                    conductivity.reshape(conductivity.shape[0], -1)
                    if conductivity.ndim == 4
                    else conductivity,
                    (x.shape[0], width),
                )
            )
            blocks.append(block["__call__"][0])
            stage_of_block.append(s)
    return {
        "stem": stem,
        "k": k,
        "blocks": blocks,
        "stage_of_block": stage_of_block,
        "stages": out["features"][0],
        "logits": logits,
    }


def power_spectrum(features) -> tuple[np.ndarray, np.ndarray]:
    """(power (H, W), radial frequency (H, W) in cycles/pixel) of features (B, H, W, C).

    The per-channel mean is removed first (no DC term); |FFT|^2 / (H W) is averaged over batch and
    channels.
    """
    f = np.asarray(features, np.float64)
    h, w = f.shape[1:3]
    f = f - f.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(f, axes=(1, 2))) ** 2).mean(axis=(0, 3)) / (h * w)
    return power, np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))


def radial_bins(power: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, mean power in each bin): bins of width 1 / max(H, W) up to Nyquist (0.5), the
    corners beyond 0.5 in the last bin, DC left out."""
    n = max(power.shape) // 2
    index = np.minimum((radius * 2 * n).round().astype(int), n)  # 0 is DC, n is Nyquist
    sums = np.bincount(index.ravel(), power.ravel(), n + 1)
    counts = np.bincount(index.ravel(), minlength=n + 1)
    keep = (counts > 0) & (np.arange(n + 1) > 0)
    return np.arange(n + 1)[keep] / (2 * n), sums[keep] / counts[keep]


def share_above(power: np.ndarray, radius: np.ndarray, cutoff: float = HIGH) -> float:
    """Share of the spectral energy above `cutoff` cycles/pixel (0 for a field with no energy)."""
    total = power.sum()
    return float(power[radius > cutoff].sum() / total) if total > 0 else 0.0


def radial_spectrum(features) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres in cycles/pixel, mean power in each bin) of features (B, H, W, C)."""
    return radial_bins(*power_spectrum(features))


def high_frequency_share(features, cutoff: float = HIGH) -> float:
    """Share of the (non-DC) spectral energy of features (B, H, W, C) above `cutoff`
    cycles/pixel."""
    return share_above(*power_spectrum(features), cutoff)


def temperature(features) -> np.ndarray:
    """The channel mean of features (B, H, W, C): (B, H, W)."""
    return np.asarray(jnp.asarray(features, jnp.float32).mean(axis=-1))


def grad_cam_map(features, tail, target):
    """Grad-CAM of classes `target` (B,) at features (B, H, W, C), `tail` mapping them to logits:
    (B, H, W).

    alpha = spatial mean of d logit[target] / d features; map = ReLU(sum_c alpha_c A_c) / its
    maximum (all zeros where nothing is positive).
    """
    target = jnp.asarray(target)

    def score(a):
        return jnp.take_along_axis(tail(a), target[:, None], axis=1).sum()

    grads = jax.grad(score)(jnp.asarray(features, jnp.float32))
    alpha = grads.mean(axis=(1, 2), keepdims=True)
    cam = jax.nn.relu((alpha * features).sum(axis=-1))
    peak = cam.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def grad_cam(model, features: list, target) -> list[jax.Array]:
    """Grad-CAM maps (B, H_i, W_i) at every stage output in `features` for classes `target` (B,)."""
    if model.head is None:
        raise UserError("Grad-CAM needs a classifier head; this model has num_classes=0")
    return [
        grad_cam_map(
            jnp.asarray(f, jnp.float32),
            lambda a, i=i: model.logits_from_stage(i, a.astype(model.dtype)),
            target,
        )
        for i, f in enumerate(features)
    ]


@functools.partial(jax.jit, static_argnums=0)
def _device_part(graphdef, state, x, target):
    """trace, the class (target, or the prediction where target < 0) and its Grad-CAM maps."""
    model = nnx.merge(graphdef, state)
    t = trace(model, x)
    target = jnp.where(target < 0, jnp.argmax(t["logits"], axis=-1), target)
    return t, target, grad_cam(model, t["stages"], target)


def analyse(model, image: np.ndarray, target: int | None = None) -> dict:
    """Every number the figures show, for one uint8 image (S, S, 3); one compiled program per model
    and size."""
    graphdef, state = nnx.split(model)
    wanted = jnp.full((1,), -1 if target is None else target, jnp.int32)
    t, target, cams = jax.device_get(
        _device_part(graphdef, state, normalize(jnp.asarray(image)[None]), wanted)
    )
    probs = np.asarray(jax.nn.softmax(t["logits"], axis=-1))[0]
    target = int(target[0])
    spectra = [power_spectrum(f) for f in [t["stem"], *t["blocks"]]]  # one FFT per feature map
    return {
        "target": target,
        "probability": float(probs[target]),
        "stage_of_block": [s for s, stage in enumerate(model.stages) for _ in stage.blocks],
        "k": [np.asarray(k[0]) for k in t["k"]],  # per block: (C,)
        "temperature": [temperature(f)[0] for f in t["stages"]],
        "spectrum_depth": ["stem", *[f"block {i + 1}" for i in range(len(t["blocks"]))]],
        "spectrum": [radial_bins(*s) for s in spectra],
        "high_frequency_share": [share_above(*s) for s in spectra],
        "grad_cam": [np.asarray(m[0]) for m in cams],
    }


def jsonable(numbers: dict) -> dict:
    out = dict(numbers)
    out["k"] = [k.tolist() for k in numbers["k"]]
    out["temperature"] = [m.tolist() for m in numbers["temperature"]]
    out["spectrum"] = [
        {"cycles_per_pixel": f.tolist(), "power": p.tolist()} for f, p in numbers["spectrum"]
    ]
    out["grad_cam"] = [m.tolist() for m in numbers["grad_cam"]]
    return out
