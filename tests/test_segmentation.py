"""Semantic segmentation: the mIoU / mAcc / aAcc of mmsegmentation, checked by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnet import sharding
from hcnet.evaluators import segmentation

I = segmentation.IGNORE_INDEX
# image 0: one ignored pixel (its prediction, 2, must not count), classes 0-2 labelled, 3 absent
# from both; image 1: class 3 predicted once and never labelled (its IoU is 0 and counts, its Acc is
# undefined); image 2: padding (mask False), which must count for nothing
LABEL = np.array([[[0, 0, 1], [I, 2, 1]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]], np.int32)
PRED = np.array([[[0, 1, 1], [2, 2, 0]], [[0, 0, 0], [0, 0, 3]], [[0, 0, 0], [0, 0, 0]]], np.int32)
MASK = np.array([True, True, False])


def test_miou_macc_aacc_by_hand():
    # image 0 alone: intersections (1, 1, 1, 0), unions (3, 3, 1, 0): IoU 1/3, 1/3, 1 and class 3
    # left out
    first = segmentation.Totals(4).add(
        segmentation.areas(PRED[:1], LABEL[:1], MASK[:1], num_classes=4), 1
    )
    assert first.metrics() == pytest.approx(
        {"mIoU": 5 / 9, "mAcc": 2 / 3, "aAcc": 3 / 5, "count": 1}
    )
    # both: intersections (6, 1, 1, 0), predicted (7, 2, 1, 1), labelled (8, 2, 1, 0), unions (9, 3,
    # 1, 1)
    both = segmentation.Totals(4).add(segmentation.areas(PRED, LABEL, MASK, num_classes=4), 2)
    np.testing.assert_array_equal(
        both.sums, [[6, 1, 1, 0], [9, 3, 1, 1], [7, 2, 1, 1], [8, 2, 1, 0]]
    )
    assert both.metrics() == pytest.approx(
        {
            "mIoU": (6 / 9 + 1 / 3 + 1 + 0) / 4,
            "mAcc": (6 / 8 + 1 / 2 + 1) / 3,
            "aAcc": 8 / 11,
            "count": 2,
        }
    )
    per = both.per_class()
    assert per["IoU"][3] == 0 and math.isnan(per["Acc"][3])
    # the split's sums, not the mean of per-image scores: image by image the mean IoU would differ
    one_by_one = segmentation.Totals(4)
    for i in range(3):
        one_by_one.add(
            segmentation.areas(PRED[i : i + 1], LABEL[i : i + 1], MASK[i : i + 1], num_classes=4),
            int(MASK[i]),
        )
    assert one_by_one.metrics() == both.metrics()


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_every_pixel_counts_once_on_any_number_of_devices(devices):
    rng = np.random.default_rng(devices)
    label = rng.integers(0, 6, (8, 16, 12)).astype(np.int32)
    label[rng.random(label.shape) < 0.2] = I
    pred = np.where(
        rng.random(label.shape) < 0.6, label % 5, rng.integers(0, 5, label.shape)
    ).astype(np.int32)
    mask = np.arange(8) < 7  # the last row is padding
    mesh = sharding.make_mesh(devices=jax.devices()[:devices])

    def put(x):
        return jax.device_put(x, sharding.batch_sharding(mesh))

    step = jax.jit(
        lambda p, l, m: segmentation.areas(p, l, m, num_classes=6),
        out_shardings=sharding.replicated(mesh),
    )
    got = segmentation.Totals(6).add(step(put(pred), put(label), put(mask)), 7)
    # mmseg's own statement, per image in numpy: drop ignored pixels, histogram the rest
    want = np.zeros((4, 6), np.int64)
    for p, l in zip(pred[:7], label[:7]):
        keep = l != I
        p, l = p[keep], l[keep]
        inter = np.histogram(p[p == l], bins=6, range=(0, 6))[0]
        ap, al = np.histogram(p, bins=6, range=(0, 6))[0], np.histogram(l, bins=6, range=(0, 6))[0]
        want += np.stack([inter, ap + al - inter, ap, al])
    np.testing.assert_array_equal(got.sums, want)
    assert got.metrics()["aAcc"] == want[0].sum() / want[3].sum()


def test_upernet_output_strides_and_shapes_at_a_non_square_size():
    """70 x 45 (neither divisible by 32): decode logits at the stem's stride-4 size, aux at stride
    16, and the image-size output."""
    from flax import nnx

    from hcnet import nets, upernet
    from hcnet.layers import conv_out_size

    spec = upernet.spec("mu", 5, channels=16, aux_channels=8, dtype="float32")
    net = nnx.jit(lambda: nets.build(spec, rngs=nnx.Rngs(0)))()
    x = np.random.default_rng(0).random((2, 70, 45, 3), np.float32)
    (decode, aux), full = nnx.jit(lambda m, x: (m.logits(x), m(x)))(
        nnx.view(net, deterministic=True, use_running_average=True), x
    )

    def down(n, times):
        return n if times == 0 else down(conv_out_size(n), times - 1)

    assert (
        decode.shape == (2, down(70, 2), down(45, 2), 5) == (2, 18, 12, 5)
    )  # the stem: two stride-2 convs
    assert aux.shape == (2, down(70, 4), down(45, 4), 5) and decode.dtype == np.float32
    assert full.shape == (2, 70, 45, 5)
    assert len(net.decode.ppm) == 4 and net.decode.fuse.conv.in_features == 4 * 16


def test_upernet_t_parameters_are_mmsegs_heads_on_hcnet_t():
    """mmseg's UPerHead (512 channels) and FCNHead (256) on HcNet-T's dims, counted by hand; BN's
    scale and bias are parameters, its running statistics are not (as mmseg counts)."""
    from hcnet.measure.count import segmentation_counts

    d, c, k = (64, 128, 320, 512), 512, 150

    def conv_bn(cin, cout, kernel):
        return kernel * kernel * cin * cout + 2 * cout  # no conv bias beside a norm

    decode = (
        4 * conv_bn(d[3], c, 1)
        + conv_bn(d[3] + 4 * c, c, 3)
        + sum(conv_bn(x, c, 1) for x in d[:3])
        + 3 * conv_bn(c, c, 3)
        + conv_bn(4 * c, c, 3)
        + c * k
        + k
    )
    aux = conv_bn(d[2], 256, 3) + 256 * k + k
    t = segmentation_counts("T")
    assert (t["decode"], t["aux"]) == (decode, aux) == (29_711_510, 776_342)
    assert t["backbone"] == 28_416_936 - (
        512 * 1000 + 1000
    )  # HcNet-T (docs/model.md's count) without its head


def test_adaptive_pool_is_torchs_on_sizes_that_do_not_divide():
    from hcnet.upernet import adaptive_avg_pool

    x = np.arange(2 * 7 * 5 * 3, dtype=np.float32).reshape(2, 7, 5, 3)
    got = np.asarray(adaptive_avg_pool(x, 3))
    # torch.nn.AdaptiveAvgPool2d(3) on 7 rows: [0, 3), [2, 5), [4, 7); on 5 columns: [0, 2), [1, 4),
    # [3, 5)
    rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 2), (1, 4), (3, 5)]
    want = np.stack(
        [np.stack([x[:, a:b, c:d].mean(axis=(1, 2)) for c, d in cols], 1) for a, b in rows], 1
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------- inference: whole, sliding window,
# scales, flip
def test_resizing_follows_opencv_and_torch_rules():
    from hcnet.data import seg_transforms as st

    row = np.array([[[0.0], [10.0]]])  # (1, 2, 1): half-pixel centres, clamped at the edges
    np.testing.assert_allclose(st.resize_bilinear(row, 1, 4)[0, :, 0], [0, 2.5, 7.5, 10])
    np.testing.assert_allclose(
        st.resize_bilinear(np.arange(4.0).reshape(1, 4, 1), 1, 2)[0, :, 0], [0.5, 2.5]
    )
    label = np.array([[1, 2, 3]], np.uint8)  # nearest takes source floor(x * 3 / 5)
    np.testing.assert_array_equal(st.resize_nearest(label, 1, 5), [[1, 1, 2, 2, 3]])


def test_the_gpus_two_tap_resize_is_the_dense_one():
    """upernet.resize on NVIDIA GPUs (two taps a row and a column) against jax.image.resize (every
    other platform): torch's align_corners=False values on a row, and the same enlargement of random
    maps. Each output is a convex combination of at most four inputs whose weights both compute in
    float32, so they differ by a few roundings of the largest input (8 ulps allowed)."""
    import jax
    import jax.numpy as jnp

    from hcnet import upernet

    row = jnp.asarray([[[[0.0], [10.0]]]])  # (1, 1, 2, 1)
    np.testing.assert_allclose(upernet.resize_by_taps(row, 1, 4)[0, 0, :, 0], [0, 2.5, 7.5, 10])
    x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype(np.float32)
    for h, w in ((20, 13), (28, 20), (7, 9)):
        dense = np.asarray(jax.image.resize(x, (2, h, w, 3), method="bilinear"))
        taps = np.asarray(upernet.resize_by_taps(jnp.asarray(x), h, w))
        atol = 8 * np.finfo(np.float32).eps * np.abs(x).max()
        np.testing.assert_allclose(taps, dense, rtol=0, atol=atol)


def test_sliding_windows_are_mmsegs_grid():
    from hcnet import seg_inference

    assert seg_inference.windows(512, 683, (512, 512), (341, 341)) == [
        (0, 512, 0, 512),
        (0, 512, 171, 683),
    ]
    assert seg_inference.windows(300, 200, (512, 512), (341, 341)) == [
        (0, 300, 0, 200)
    ]  # smaller than a crop
    boxes = seg_inference.windows(700, 1100, (512, 512), (341, 341))
    assert len(boxes) == 2 * 3 and boxes[-1] == (188, 700, 588, 1100)
    covered = np.zeros((700, 1100), int)
    for y0, y1, x0, x1 in boxes:
        assert (y1 - y0, x1 - x0) == (512, 512)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1


def test_sliding_window_and_whole_image_agree_for_a_pointwise_model_and_not_for_a_spatial_one():
    from hcnet import seg_inference

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 5)).astype(np.float32)
    pointwise = jax.jit(lambda x: x @ weights / 255)
    context = jax.jit(
        lambda x: x @ weights / 255 + x.mean((1, 2), keepdims=True) @ weights / 25
    )  # sees the window
    image = rng.integers(0, 256, (70, 110, 3)).astype(np.uint8)
    kw = dict(crop=(32, 48), stride=(21, 30), pad_to=4)
    np.testing.assert_allclose(
        seg_inference.slide_logits(pointwise, image, **kw),
        seg_inference.whole_logits(pointwise, image),
        rtol=1e-6,
        atol=1e-6,
    )
    assert not np.allclose(
        seg_inference.slide_logits(context, image, **kw),
        seg_inference.whole_logits(context, image),
        atol=1e-3,
    )
    # multi-scale with flip: probabilities at the image's size; a mirror-symmetric model is
    # unchanged by the flip
    p = seg_inference.probability_map(
        pointwise, image, scale=(110, 70), ratios=(0.5, 1.0, 1.5), flip=True, **kw
    )
    assert p.shape == (70, 110, 5)
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-5)
    single = seg_inference.probability_map(pointwise, image, scale=(110, 70), flip=False, **kw)
    flipped = seg_inference.probability_map(pointwise, image, scale=(110, 70), flip=True, **kw)
    np.testing.assert_allclose(flipped, single, rtol=1e-5, atol=1e-6)
    ramp = jax.jit(
        lambda x: (
            x @ weights / 255 + jnp.linspace(0, 3, x.shape[2])[None, None, :, None] * jnp.arange(5)
        )
    )
    assert not np.allclose(
        seg_inference.probability_map(ramp, image, scale=(110, 70), flip=True, **kw),
        seg_inference.probability_map(ramp, image, scale=(110, 70), flip=False, **kw),
        atol=1e-3,
    )


PALETTE = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 240, 20]], np.uint8)


def reads_colour(weights, x):
    """A 'network' whose logits say how close each pixel's colour is to each class's (weights: the
    palette)."""
    return -jnp.sum((x[..., None, :] - weights[None, None, None]) ** 2, -1)


def colour_source(sizes=((40, 56), (33, 56))):
    """(SegmentationSource of images whose colours name their classes, their labels): 8x8 blocks of
    random classes, a 3x3 ignored corner; sizes at scale 1 of (56, 40), none a multiple of the
    window."""
    import io

    from PIL import Image

    from hcnet.data import sources

    rng = np.random.default_rng(0)
    records, labels = [], []
    for h, w in sizes:
        label = np.kron(rng.integers(0, 4, (h // 8 + 1, w // 8 + 1)), np.ones((8, 8), int))[
            :h, :w
        ].astype(np.uint8)
        label[:3, :3] = I  # ignored pixels, whatever is predicted there
        encoded = []
        for a in (PALETTE[np.minimum(label, 3)], label):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "PNG")
            encoded.append(buf.getvalue())
        records.append({"image": encoded[0], "segmentation": encoded[1]})
        labels.append(label)
    return sources.SegmentationSource(
        records, "colours", "test", ("r", "g", "b", "y"), False, I
    ), labels


def test_the_evaluator_scores_each_image_at_its_own_size_whole_or_by_window():
    """Images whose colours name their classes, and a 'network' that reads the colour back: a
    perfect score, whole or by sliding window, on 8 devices or 1; shifting its answer by one class
    scores 0."""
    source, labels = colour_source()
    weights = jnp.asarray(PALETTE, jnp.float32)
    for devices, mode in ((8, "slide"), (1, "whole"), (8, "whole")):
        mesh = sharding.make_mesh(devices=jax.devices()[:devices])
        ev = segmentation.Evaluator(
            "ade",
            source,
            reads_colour,
            mesh=mesh,
            mode=mode,
            crop=(24, 24),
            stride=(16, 16),
            scale=(56, 40),
        )
        got = ev(weights)
        assert got == {"mIoU": 1.0, "mAcc": 1.0, "aAcc": 1.0, "count": 2}, (devices, mode, got)
        labelled = sum(int((lb != I).sum()) for lb in labels)
        assert (
            ev.totals(weights).sums[3].sum() == labelled
        )  # every labelled pixel of each image, once
    shifted = jnp.roll(weights, 1, axis=0)  # class c now answers c + 1
    assert ev(shifted)["mIoU"] == 0.0


def test_the_pixel_loss_counts_ignored_pixels_as_zero_in_the_mean_as_mmseg_does():
    from hcnet.tasks.segmentation import pixel_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 4, 6))
    labels[0, :2] = I  # a third of image 0 ignored
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.where(labels == I, 0, labels)[..., None], -1)[..., 0]
    want = (
        np.where(labels == I, 0, ce).sum((1, 2)) / 24
    )  # every pixel of the crop in the denominator
    np.testing.assert_allclose(
        pixel_loss(jnp.asarray(logits), jnp.asarray(labels)), want, rtol=1e-5
    )
    # logits at a lower resolution are enlarged to the labels first (constant logits stay constant)
    flat = np.zeros((1, 2, 3, 3), np.float32)
    flat[..., 1] = 2.0
    got = pixel_loss(jnp.asarray(flat), jnp.ones((1, 8, 12), jnp.int32))
    np.testing.assert_allclose(got, [-2 + np.log(2 + np.exp(2))], rtol=1e-6)


def test_the_device_side_zeroes_the_padding_after_normalising_and_a_bad_pair_is_masked_out():
    """mmseg pads after Normalize, so padded pixels are 0 in the network's input, not black; an
    image whose mask does not match it is left out of the batch (mask False) rather than stopping
    the run."""
    import io

    from PIL import Image

    from hcnet.config import defaults
    from hcnet.data import seg_transforms
    from hcnet.tasks.segmentation import Example, Task

    c = defaults()
    c.task, c.dataset.num_classes = "segmentation", 3
    task = Task(c)
    image = np.full((2, 4, 5, 3), 200, np.uint8)
    x, labels = task.train_inputs(
        None,
        {
            "image": image,
            "label": np.zeros((2, 4, 5), np.uint8),
            "valid": np.array([[4, 5], [2, 3]], np.int32),
        },
    )
    assert float(jnp.abs(x[1, 2:]).max()) == 0 and float(jnp.abs(x[1, :, 3:]).max()) == 0
    assert float(jnp.abs(x[1, :2, :3]).min()) > 0.5 and float(jnp.abs(x[0]).min()) > 0.5
    assert labels.dtype == jnp.int32

    def png(a):
        return (lambda buf: (Image.fromarray(a).save(buf, "PNG"), buf.getvalue())[1])(io.BytesIO())

    example = Example(seg_transforms.TrainTransform(crop=(8, 8), scale=(16, 8)), 3, False)
    good = example(
        {
            "image": png(np.zeros((8, 12, 3), np.uint8)),
            "segmentation": png(np.ones((8, 12), np.uint8)),
            "index": 0,
        },
        np.random.default_rng(0),
    )
    assert (
        good["mask"]
        and good["image"].shape == (8, 8, 3)
        and set(np.unique(good["label"])) <= {1, I}
    )
    bad = example(
        {
            "image": png(np.zeros((8, 12, 3), np.uint8)),
            "segmentation": png(np.ones((8, 10), np.uint8)),
            "index": 1,
        },
        np.random.default_rng(0),
    )
    assert not bad["mask"] and bad["image"].shape == (8, 8, 3) and (bad["label"] == I).all()


TWO_HOSTS = """
import sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
pid = int(sys.argv[1])
jax.distributed.initialize(sys.argv[2], 2, pid)
from hcnet import sharding
from hcnet.evaluators import segmentation
import test_segmentation as t
source, labels = t.colour_source(((40, 56), (33, 56), (40, 48)))
mesh = sharding.make_mesh()  # 4 devices over the 2 processes
palette = t.PALETTE.astype(np.float32)
weights = jax.make_array_from_callback((4, 3), NamedSharding(mesh, P()), lambda i: palette[i])
ev = segmentation.Evaluator("ade", source, t.reads_colour, mesh=mesh, mode="slide", crop=(24, 24),
                            stride=(16, 16), scale=(56, 40))
totals = ev.totals(weights)
labelled = sum(int((l != t.I).sum()) for l in labels)
print("RESULT", ev(weights), int(totals.sums[3].sum()), labelled, flush=True)
"""


def test_two_hosts_score_every_image_once_each_on_its_own_devices():
    """Two processes of two devices: each infers its share of the images on its own devices (the
    images differ between processes) and the split's sums are added: the perfect score and every
    labelled pixel of the three images counted once, on both."""
    import ast
    import os
    import pathlib
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    here = str(pathlib.Path(__file__).parent)
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_HOSTS, str(i), address],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT")).split(" ", 1)[1]
        metrics, counted, labelled = line.rsplit(" ", 2)
        assert ast.literal_eval(metrics) == {"mIoU": 1.0, "mAcc": 1.0, "aAcc": 1.0, "count": 3}
        assert int(counted) == int(labelled)
