"""UperNet (Xiao et al. 2018) on HcNet's four stages, as mmsegmentation builds it for Swin and
HcNet.

    decode head  pyramid pooling on stage 4 (adaptive average pools 1, 2, 3, 6, each a 1x1 conv,
    upsampled,
                 concatenated with stage 4, a 3x3 conv), an FPN over the four stages (1x1 laterals,
                 top-down sums, 3x3 convs), the four levels upsampled to stride 4 and fused by a 3x3
                 conv; dropout 0.1 and a 1x1 classifier. Every conv but the classifiers is conv (no
                 bias) + BN + ReLU.
    aux head     FCN on stage 3: one 3x3 conv + BN + ReLU (256 channels), dropout 0.1, a 1x1
    classifier;
                 trained with loss weight 0.4, not used at inference.

NHWC throughout; logits at stride 4 (`__call__`), upsampled to the image by the task. The norm is
BatchNorm: under jit over a batch sharded across devices (and hosts) its statistics are over the
whole global batch, which is what mmseg's SyncBN computes.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hcnet import model
from hcnet.model import HcNet

POOL_SCALES = (1, 2, 3, 6)


def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
    """(bins, size) averaging weights of PyTorch's AdaptiveAvgPool: bin i covers [floor(i*n/b),
    ceil((i+1)*n/b))."""
    m = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start, stop = (i * size) // bins, -((-(i + 1) * size) // bins)
        m[i, start:stop] = 1.0 / (stop - start)
    return m


def adaptive_avg_pool(x, bins: int):
    """(B, H, W, C) -> (B, bins, bins, C), exactly as torch.nn.AdaptiveAvgPool2d(bins). Rows, then
    columns, as two contractions: XLA's GPU compiler finds no tiling for the one-einsum form's
    gradient (BENCHMARKS.md, "Compiled ahead of time")."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], bins), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], bins), x.dtype)
    rows = jnp.einsum("ih,bhwc->biwc", ph, x)
    return jnp.einsum("biwc,jw->bijc", rows, pw)


def bilinear_taps(size: int, out: int):
    """(first, second, their weights) of each output row when `size` rows are enlarged to `out`,
    PyTorch's align_corners=False rule: source = (i + 0.5) size / out - 0.5, clamped to the
    image."""
    src = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
    first = np.minimum(np.floor(src).astype(np.int32), size - 1)
    second = np.minimum(first + 1, size - 1)
    w = (src - first).astype(np.float32)
    return first, second, 1.0 - w, w


def _enlarge(x, axis: int, out: int):
    """x bilinearly enlarged to `out` along `axis` (1: rows, 2: columns), two taps an output."""
    first, second, w0, w1 = bilinear_taps(x.shape[axis], out)
    shape = [1] * x.ndim
    shape[axis] = out
    w0, w1 = w0.reshape(shape).astype(x.dtype), w1.reshape(shape).astype(x.dtype)
    return jnp.take(x, first, axis=axis) * w0 + jnp.take(x, second, axis=axis) * w1


def resize_by_taps(x, height: int, width: int):
    """`resize` as two taps a row, then two a column (no matrix product)."""
    return _enlarge(_enlarge(x, 1, height), 2, width)


def resize(x, height: int, width: int):
    """Bilinear with half-pixel centres (PyTorch's align_corners=False) to (height, width); the head
    only enlarges, where jax.image.resize and torch agree. On NVIDIA GPUs as two taps a row and a
    column: XLA's GPU compiler finds no tiling for jax.image.resize's matrix products in the loss's
    gradient (BENCHMARKS.md, "Compiled ahead of time")."""

    def dense(x):
        return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="bilinear")

    def taps(x):
        return resize_by_taps(x, height, width)

    return jax.lax.platform_dependent(x, cuda=taps, default=dense)


class ConvBNReLU(nnx.Module):
    def __init__(self, cin: int, cout: int, kernel: int, *, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            cin, cout, (kernel, kernel), padding="SAME", use_bias=False, dtype=dtype, rngs=rngs
        )
        self.bn = nnx.BatchNorm(
            cout, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs
        )  # torch momentum 0.1

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class Classifier(nnx.Module):
    """Dropout 0.1 (whole channels, as Dropout2d) and a 1x1 conv with bias to the classes."""

    def __init__(self, cin: int, num_classes: int, *, dropout: float, dtype, rngs: nnx.Rngs):
        self.drop = nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)
        self.conv = nnx.Conv(cin, num_classes, (1, 1), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv(self.drop(x)).astype(jnp.float32)


class UperHead(nnx.Module):
    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales=POOL_SCALES,
        dropout: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, rngs=rngs)
        self.pool_scales = tuple(pool_scales)
        self.ppm = nnx.List([ConvBNReLU(in_channels[-1], channels, 1, **kw) for _ in pool_scales])
        self.bottleneck = ConvBNReLU(
            in_channels[-1] + len(pool_scales) * channels, channels, 3, **kw
        )
        self.laterals = nnx.List([ConvBNReLU(c, channels, 1, **kw) for c in in_channels[:-1]])
        self.fpn = nnx.List([ConvBNReLU(channels, channels, 3, **kw) for _ in in_channels[:-1]])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3, **kw)
        self.classifier = Classifier(channels, num_classes, dropout=dropout, **kw)

    def __call__(self, feats):
        last = feats[-1]
        h, w = last.shape[1:3]
        pooled = [
            resize(conv(adaptive_avg_pool(last, s)), h, w)
            for s, conv in zip(self.pool_scales, self.ppm)
        ]
        levels = [lat(f) for lat, f in zip(self.laterals, feats[:-1])]
        levels.append(self.bottleneck(jnp.concatenate([last, *pooled], axis=-1)))
        for i in range(
            len(levels) - 1, 0, -1
        ):  # top-down: each level adds the coarser one, enlarged
            levels[i - 1] = levels[i - 1] + resize(levels[i], *levels[i - 1].shape[1:3])
        outs = [conv(x) for conv, x in zip(self.fpn, levels[:-1])] + [levels[-1]]
        h, w = outs[0].shape[1:3]
        fused = self.fuse(jnp.concatenate([outs[0], *(resize(x, h, w) for x in outs[1:])], axis=-1))
        return self.classifier(fused)


class FCNHead(nnx.Module):
    def __init__(
        self,
        cin: int,
        num_classes: int,
        *,
        channels: int = 256,
        dropout: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = ConvBNReLU(cin, channels, 3, dtype=dtype, rngs=rngs)
        self.classifier = Classifier(channels, num_classes, dropout=dropout, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.classifier(self.conv(x))


class UperNet(nnx.Module):
    """HcNet backbone (no classification head) + UperHead + the auxiliary FCNHead on stage 3."""

    def __init__(
        self,
        backbone: HcNet,
        dims: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        aux_channels: int = 256,
        dropout: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.backbone = backbone
        self.decode = UperHead(
            dims, num_classes, channels=channels, dropout=dropout, dtype=dtype, rngs=rngs
        )
        self.aux = FCNHead(
            dims[2], num_classes, channels=aux_channels, dropout=dropout, dtype=dtype, rngs=rngs
        )

    def logits(self, x):
        """(decode logits, auxiliary logits), both float32 at strides 4 and 16. x (B, H, W, 3)."""
        feats = self.backbone.features(x)
        return self.decode(feats), self.aux(feats[2])

    def __call__(self, x):
        """Decode logits at the image's size (bilinear from stride 4), float32 (B, H, W,
        classes)."""
        return resize(self.decode(self.backbone.features(x)), *x.shape[1:3])


def decoder_spec(
    num_classes: int = 150, *, channels: int = 512, aux_channels: int = 256, dropout: float = 0.1
) -> dict:
    """What a spec's `decoder` entry holds (mmseg's head sizes by default)."""
    return {
        "kind": "upernet",
        "num_classes": num_classes,
        "channels": channels,
        "aux_channels": aux_channels,
        "dropout": dropout,
    }


def spec(
    variant: str | None,
    num_classes: int = 150,
    *,
    channels: int = 512,
    aux_channels: int = 256,
    dropout: float = 0.1,
    **overrides,
) -> dict:
    """A whole network's spec (hcnet.nets.build takes it): the HcNet `variant` without its
    classification head, and the decoder."""
    decoder = decoder_spec(
        num_classes, channels=channels, aux_channels=aux_channels, dropout=dropout
    )
    return {**model.model_spec(variant, **{**overrides, "num_classes": 0}), "decoder": decoder}


def from_spec(backbone: dict, decoder: dict, *, rngs: nnx.Rngs) -> UperNet:
    """UperNet from a backbone spec (HcNet's keyword arguments) and a decoder entry
    (`decoder_spec`)."""
    if decoder.get("kind") != "upernet":
        raise ValueError(f"decoder {decoder.get('kind')!r}: this version builds 'upernet'")
    return UperNet(
        model.from_spec(backbone, rngs=rngs),
        backbone["dims"],
        decoder["num_classes"],
        channels=decoder["channels"],
        aux_channels=decoder["aux_channels"],
        dropout=decoder["dropout"],
        dtype=backbone.get("dtype", jnp.float32),
        rngs=rngs,
    )
