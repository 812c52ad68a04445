"""Mask R-CNN's layers after the backbone, as mmdetection 2.11 builds them for Swin's
`mask_rcnn_swin_fpn`, with mmdet's initialisations: the FPN, the RPN head, the Shared2FC box head
and the FCN mask head (NHWC; the box and mask heads' outputs in float32)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _conv(cin, cout, k, rngs, *, init=None, stride=1):
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding="SAME" if k > 1 else "VALID",
        kernel_init=init or nnx.initializers.xavier_uniform(),
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


_KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class FPN(nnx.Module):
    """Lateral 1x1 convolutions, top-down nearest upsampling to each finer map's size, 3x3 output
    convolutions (xavier-uniform, as mmdet's FPN), and P6 = max-pool(P5, 1, stride 2)."""

    def __init__(self, dims, channels: int, *, rngs: nnx.Rngs):
        self.lateral = nnx.List([_conv(d, channels, 1, rngs) for d in dims])
        self.output = nnx.List([_conv(channels, channels, 3, rngs) for _ in dims])

    def __call__(self, feats):
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            h, w = laterals[i - 1].shape[1:3]
            laterals[i - 1] = laterals[i - 1] + _nearest(laterals[i], h, w)
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        return outs + [outs[-1][:, ::2, ::2]]


def _nearest(x, h, w):
    """torch's nearest interpolation to (h, w): source index floor(i * in / out) (for an exact
    doubling, each row and column twice)."""
    if x.shape[1] * 2 == h and x.shape[2] * 2 == w:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (np.arange(h) * x.shape[1] // h).astype(np.int32)
    cols = (np.arange(w) * x.shape[2] // w).astype(np.int32)
    return x[:, rows][:, :, cols]


class RPNHead(nnx.Module):
    """3x3 conv + ReLU, then per point 3 objectness logits and 3 x 4 deltas (normal 0.01 init)."""

    def __init__(self, channels: int, num_anchors: int, *, rngs: nnx.Rngs):
        normal = nnx.initializers.normal(0.01)
        self.conv = _conv(channels, channels, 3, rngs, init=normal)
        self.cls = _conv(channels, num_anchors, 1, rngs, init=normal)
        self.reg = _conv(channels, num_anchors * 4, 1, rngs, init=normal)

    def __call__(self, x):
        h = jax.nn.relu(self.conv(x))
        b = x.shape[0]
        return self.cls(h).reshape(b, -1), self.reg(h).reshape(b, -1, 4)


class BoxHead(nnx.Module):
    """Shared2FCBBoxHead: two 1024 fully connected layers (xavier), then class scores (background
    last; normal 0.01) and class-specific deltas (normal 0.001)."""

    def __init__(self, channels: int, fc: int, num_classes: int, *, rngs: nnx.Rngs):
        def dense(i, o, init):
            return nnx.Linear(i, o, kernel_init=init, bias_init=nnx.initializers.zeros, rngs=rngs)

        xavier = nnx.initializers.xavier_uniform()
        self.fc1 = dense(channels * 49, fc, xavier)
        self.fc2 = dense(fc, fc, xavier)
        self.cls = dense(fc, num_classes + 1, nnx.initializers.normal(0.01))
        self.reg = dense(fc, num_classes * 4, nnx.initializers.normal(0.001))
        self.num_classes = num_classes

    def __call__(self, pooled):
        h = jax.nn.relu(self.fc1(pooled.reshape(pooled.shape[0], -1)))
        h = jax.nn.relu(self.fc2(h)).astype(jnp.float32)
        deltas = self.reg(h).reshape(h.shape[0], self.num_classes, 4)
        return self.cls(h), deltas


class MaskHead(nnx.Module):
    """FCNMaskHead: 4 3x3 convolutions + ReLU, a 2x transposed convolution + ReLU, and a 1x1
    convolution to one mask logit per class (kaiming-normal, fan out)."""

    def __init__(self, channels: int, convs: int, num_classes: int, *, rngs: nnx.Rngs):
        self.convs = nnx.List(
            [_conv(channels, channels, 3, rngs, init=_KAIMING_FAN_OUT) for _ in range(convs)]
        )
        self.up = nnx.ConvTranspose(
            channels,
            channels,
            (2, 2),
            strides=2,
            kernel_init=_KAIMING_FAN_OUT,
            bias_init=nnx.initializers.zeros,
            rngs=rngs,
        )
        self.logits = _conv(channels, num_classes, 1, rngs, init=_KAIMING_FAN_OUT)

    def __call__(self, pooled):
        h = pooled
        for conv in self.convs:
            h = jax.nn.relu(conv(h))
        return self.logits(jax.nn.relu(self.up(h))).astype(jnp.float32)
