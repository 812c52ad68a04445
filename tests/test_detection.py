"""Mask R-CNN on HcNet: the host pipeline keeps image, boxes and masks aligned, mask targets and
pasting by hand, the network's losses and detections, evaluation on any number of devices, and the
config's one-line checks."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hcnet import config as config_lib
from hcnet import model, nets, sharding, tasks
from hcnet.data import det_transforms, instances
from hcnet.detection import postprocess, roi_align
from hcnet.errors import ConfigError


def painted(h=60, w=90):
    """An image whose colour names its instance: instance k is grey level 60 (k + 1) on black."""
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 10:30, 5:40] = 1
    masks[1, 25:55, 50:85] = 1
    masks[0] &= ~masks[1]
    image = np.zeros((h, w, 3), np.uint8)
    for k in range(2):
        image[masks[k] > 0] = 60 * (k + 1)
    boxes = np.stack([instances.mask_box(m) for m in masks])
    return instances.Instances(image, boxes, np.array([0, 1], np.int32), masks, 7)


class Always:
    """A generator whose uniform() is 0 (every coin comes up: flip, crop branch) and integers()
    picks the last choice, or with `low` the lowest value."""

    def __init__(self, low: bool = False):
        self.low = low

    def uniform(self):
        return 0.0

    def integers(self, a, b=None):
        if b is None:
            return a - 1
        return a if self.low else b - 1


@pytest.mark.parametrize("flip", [False, True])
def test_the_pipeline_keeps_image_boxes_and_masks_aligned(flip):
    """Resized from 60x90 to 80x120 (and flipped): each instance's mask covers pixels of its own
    grey level, its box is its mask's tight box to a pixel, and the rest is padding."""
    t = det_transforms.Transform(canvas=(128, 128), scales=((120, 80),), flip=1.0, max_instances=3)
    out = t(painted(), Always() if flip else None)
    assert out["image_hw"].tolist() == [80, 120]
    assert out["gt_valid"].tolist() == [True, True, False]
    for k in range(2):
        m = out["gt_masks"][k] > 0
        # inside the mask (a pixel in from its edge, where bilinear and nearest resizing differ)
        inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
        grey = out["image"][..., 0][inner].astype(int)
        assert inner.sum() > 300 and (np.abs(grey - 60 * (k + 1)) <= 1).all()
        np.testing.assert_allclose(out["gt_boxes"][k], instances.mask_box(m), atol=1.0)
    assert not out["image"][80:].any() and not out["image"][:, 120:].any()
    # the flip moves image and masks together: the first instance's pixels are on the right
    centre = np.nonzero(out["gt_masks"][0])[1].mean()
    assert (centre > 60) == flip
    np.testing.assert_allclose(out["scale"], [120 / 90, 80 / 60] * 2, rtol=1e-6)


def test_swins_crop_branch_keeps_boxes_and_masks_aligned():
    """By the scripted draws: resized to 600x900 (the last of CROP_SCALES), cropped to its top-left
    384x384, resized to 80x80, flipped. The second instance lies outside the crop and is dropped;
    the first is cut by the crop's right edge, and its mask still covers its own pixels with its
    box the mask's tight box."""
    t = det_transforms.Transform(
        canvas=(128, 128), scales=((120, 80),), flip=1.0, max_instances=3, crop_branch=True
    )
    out = t(painted(), Always(low=True))
    assert out["image_hw"].tolist() == [80, 80]
    assert out["gt_valid"].tolist() == [True, False, False]
    m = out["gt_masks"][0] > 0
    inner = m.copy()  # two pixels in from the mask's edge: downscaling 4.8x blurs about one
    for shift in (1, 2):
        for axis in (0, 1):
            inner &= np.roll(m, shift, axis) & np.roll(m, -shift, axis)
    grey = out["image"][..., 0][inner].astype(int)
    assert inner.sum() > 100 and (np.abs(grey - 60) <= 1).all()
    np.testing.assert_allclose(out["gt_boxes"][0], instances.mask_box(m), atol=1.0)
    # cut at the crop's right edge (x = 384 of 384), which the flip puts at x = 0
    assert out["gt_boxes"][0][0] == pytest.approx(0.0, abs=1e-3)
    assert not out["gt_masks"][1].any()


def test_more_instances_than_the_padding_are_cut_and_said(caplog):
    t = det_transforms.Transform(canvas=(128, 128), scales=((90, 60),), max_instances=1)
    out = t(painted())
    assert out["gt_valid"].tolist() == [True]
    assert "has 2 instances; the first 1 are kept" in caplog.text


def test_an_image_larger_than_the_canvas_is_refused_in_one_line():
    t = det_transforms.Transform(canvas=(64, 64), scales=((120, 80),))
    with pytest.raises(Exception, match="does not fit the \\(64, 64\\) canvas"):
        t(painted())


def test_mask_targets_crop_the_full_resolution_mask():
    gt = np.zeros((1, 64, 64), np.uint8)
    gt[0, 16:48, 8:40] = 1  # 32 x 32 at (8, 16)
    rois = jnp.array([[8.0, 16.0, 40.0, 48.0], [24.0, 16.0, 56.0, 48.0]])
    t = np.asarray(roi_align.mask_targets(jnp.asarray(gt), jnp.array([0, 0]), rois))
    assert t[0].all()  # the box itself: all mask
    assert t[1][:, :14].all() and not t[1][:, 14:].any()  # half of it over the mask


def test_pasting_a_mask_fills_its_box():
    full = postprocess.paste_mask(np.ones((28, 28)), (10.0, 20.0, 50.0, 40.0), 60, 80)
    assert full[20:40, 10:50].all() and full.sum() == 40 * 20
    left = np.zeros((28, 28))
    left[:, :14] = 1.0
    half = postprocess.paste_mask(left, (10.0, 20.0, 50.0, 40.0), 60, 80)
    assert half[20:40, 10:30].all() and not half[:, 31:].any()


def test_detections_go_back_to_the_original_pixels():
    det = {
        "boxes": np.array([[[20.0, 10.0, 60.0, 50.0], [0, 0, 1, 1]]]),
        "scores": np.array([[0.9, 0.1]]),
        "labels": np.array([[2, 0]]),
        "valid": np.array([[True, False]]),
        "masks": np.ones((1, 2, 28, 28)),
    }
    boxes, scores, labels, masks = postprocess.to_image(det, 0, [2.0, 2.0, 2.0, 2.0], 30, 40)
    assert boxes.tolist() == [[10.0, 5.0, 30.0, 25.0]] and labels.tolist() == [2]
    assert masks.shape == (1, 30, 40) and masks[0, 5:25, 10:30].all()


def tiny_config(**detection):
    c = config_lib.from_file("configs/det_quickstart.py")
    c.detection.update(detection)
    return c


@pytest.fixture(scope="module")
def tiny_net():
    c = tiny_config(channels=16, fc_channels=32, rpn_train_pre=100, rpn_test_pre=100, rpn_post=50)
    task = tasks.create(c)
    return task, nets.build(task.spec, rngs=nnx.Rngs(0))


def test_losses_start_where_a_fresh_network_should(tiny_net):
    """rpn_cls near ln 2 (sigmoid at 0), rcnn_cls near ln 5 (five-way softmax near uniform), finite
    box and mask terms; each image's share averages to the batch's loss."""
    task, net = tiny_net
    source = task.source("train", training=True)
    t = task.transform(True)
    batch = [t(source[i]) for i in range(2)]
    stacked = {k: jnp.stack([b[k] for b in batch]) for k in batch[0]}
    stacked["mask"] = jnp.ones(2, bool)
    inputs, _ = task.train_inputs(jax.random.key(0), stacked)
    shares, terms = nnx.jit(lambda n, i: n.losses(*i))(net, inputs)
    terms = {k: float(jnp.mean(v)) for k, v in terms.items()}
    assert abs(terms["rpn_cls"] - np.log(2)) < 0.05
    assert abs(terms["rcnn_cls"] - np.log(5)) < 0.1
    assert all(np.isfinite(v) for v in terms.values())
    np.testing.assert_allclose(float(jnp.mean(shares)), sum(terms.values()), rtol=1e-5)


def test_detections_have_static_shapes_and_stay_in_the_image(tiny_net):
    task, net = tiny_net
    x = jnp.zeros((2, 128, 128, 3))
    hw = jnp.array([[96.0, 128.0], [64.0, 100.0]])
    out = nnx.jit(lambda n, x, hw: n.detect(x, hw))(net, x, hw)
    assert out["boxes"].shape == (2, 20, 4) and out["masks"].shape == (2, 20, 28, 28)
    boxes = np.asarray(out["boxes"])
    assert (boxes[1, :, [0, 2]] <= 100).all() and (boxes[1, :, [1, 3]] <= 64).all()


def test_evaluation_counts_every_image_once_on_any_number_of_devices(tiny_net):
    """The same detections, so the same AP, from one device and from eight, each of the 80 images
    scored once."""
    task, net = tiny_net
    weights = nets.weights_of(net)
    model_def, _ = nets.ModelDef.from_spec(task.spec)
    predict = nets.predict_fn(model_def)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices=devices)
        (evaluator,) = task.evaluators(mesh, predict)
        results.append(evaluator(weights))
    assert results[0]["count"] == results[1]["count"] == 80
    for key in ("bbox_AP", "segm_AP", "bbox_AP50"):
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("canvas", (100, 128), "multiples of 64"),
        ("canvas", (64, 64), "at least 128 a side"),
        ("scales", (), "one or more \\(long, short\\) sizes"),
    ],
)
def test_bad_detection_fields_stop_in_one_line(field, value, message):
    c = tiny_config(**{field: value})
    with pytest.raises(ConfigError, match=f"^config.detection.{field}=.*{message}"):
        tasks.validate(c, 8)


def test_the_spec_is_a_mask_rcnn_on_a_headless_hcnet():
    task = tasks.create(tiny_config())
    assert task.spec["num_classes"] == 0 and task.spec["decoder"]["kind"] == "mask_rcnn"
    assert task.spec["decoder"]["num_classes"] == 4
    assert model.model_spec("mu")["dims"] == task.spec["dims"]


def test_counts_by_hand():
    """HcNet-T without its head, then FPN (256), RPN (3 anchors), Shared2FC (1024, 80 classes +
    background, class-specific deltas) and the FCN mask head (4 convs, deconvolution, 80 masks)."""
    from hcnet.measure import count

    out = count.detection_counts("T", 80, 64, 96)
    conv = 9 * 256 * 256 + 256
    assert out["backbone"] == 28_416_936 - (512 * 1000 + 1000)
    assert out["fpn"] == sum(d * 256 + 256 for d in (64, 128, 320, 512)) + 4 * conv
    assert out["rpn"] == conv + (256 * 3 + 3) + (256 * 12 + 12)
    fc = (256 * 49 * 1024 + 1024) + (1024 * 1024 + 1024)
    assert out["box_head"] == fc + (1024 * 81 + 81) + (1024 * 320 + 320)
    assert out["mask_head"] == 4 * conv + (4 * 256 * 256 + 256) + (256 * 80 + 80)
    assert out["params"] == sum(out[k] for k in ("backbone", "fpn", "rpn", "box_head", "mask_head"))


def test_predict_prints_detections_and_draws_them(tiny_net, tmp_path, capsys):
    """hcnet.tools.predict on a detection checkpoint: one line per image with its figure, one per
    detection (score, class, box inside the image), and a PNG; an unreadable file is skipped."""
    from PIL import Image

    from hcnet import checkpoint, tools
    from hcnet.tools import predict as predict_tool

    task, net = tiny_net
    directory = checkpoint.save(tmp_path / "det", net, task.spec)
    (directory / "config.json").write_text(task.config.to_json())
    item = task.source("val", training=False)[0]
    Image.fromarray(item.image).save(tmp_path / "collage.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit):
        tools.invoke(
            predict_tool.main,
            [
                f"--checkpoint={directory}",
                f"--out={tmp_path / 'figures'}",
                str(tmp_path / "collage.png"),
                str(tmp_path / "notes.png"),
            ],
        )
    out, err = capsys.readouterr()
    assert "skipped" in err and "notes.png" in err
    assert (
        "collage_detections.png" in out and (tmp_path / "figures/collage_detections.png").exists()
    )
    lines = out.splitlines()[1:]
    assert lines  # detections, or the line that says none scored high enough
    for line in (x for x in lines if x.strip()[:1].isdigit()):
        score, name, *_, x1, y1, x2, y2 = line.split()
        assert name in ("cat", "coffee", "astronaut", "rocket")
        assert 0 <= float(x1) <= float(x2) <= 128 and 0 <= float(y1) <= float(y2) <= 96


def test_eval_reports_ap_and_the_detections_in_cocos_results_format(tiny_net, tmp_path):
    from hcnet import checkpoint, eval_report

    task, net = tiny_net
    directory = checkpoint.save(tmp_path / "det", net, task.spec)
    report = eval_report.evaluate(task.config, directory)
    assert report["results"]["raw"]["count"] == 80 and "segm_AP" in report["results"]["raw"]
    rows = report["detections"]["eval_raw"]
    assert rows and set(rows[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert {r["category_id"] for r in rows} <= {1, 2, 3, 4}
    assert "segm_AP" in eval_report.report_table(report)


@pytest.mark.heavy
def test_a_short_run_lifts_box_and_mask_ap_far_above_an_untrained_networks(tmp_path):
    """train.py runs configs/det_quickstart.py for 150 updates (in a process of one CPU device at
    XLA's usual optimisation: the suite's eight fake devices at level 0 take five times as long);
    COCOeval's box and mask AP on the 80 validation collages rise from an untrained network's
    (near 0) to well above it."""
    import json
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    workdir = tmp_path / "run"
    flags = [
        "--config.total_steps=150",
        "--config.optim.warmup_steps=20",
        "--config.eval_every_steps=0",
        "--config.checkpoint_every_steps=150",
        "--config.detection.sampling_ratio=1",
    ]
    env = {**os.environ, "XLA_FLAGS": ""}
    proc = subprocess.run(
        [sys.executable, "train.py", "--config=configs/det_quickstart.py", f"--workdir={workdir}"]
        + flags,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    result = next(r for r in reversed(rows) if "eval/bbox_AP" in r)
    c = tiny_config(sampling_ratio=1)
    task = tasks.create(c)
    fresh = nets.build(task.spec, rngs=nnx.Rngs(0))
    model_def, _ = nets.ModelDef.from_spec(task.spec)
    (evaluator,) = task.evaluators(sharding.make_mesh(), nets.predict_fn(model_def))
    untrained = evaluator(nets.weights_of(fresh))
    assert result["eval/count"] == 80
    for kind in ("bbox", "segm"):
        trained = result[f"eval/{kind}_AP"]
        assert trained > 0.05 and trained > 5 * untrained[f"{kind}_AP"], (kind, trained, untrained)


def coco_folder(root: pathlib.Path) -> pathlib.Path:
    """A miniature COCO in its own layout: val2017/ with four JPEGs and
    annotations/instances_val2017.json with a polygon, an RLE mask, a crowd region, a box under a
    pixel wide, an image without objects and one under 32 pixels a side."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    sizes = {1: (60, 80), 2: (50, 70), 3: (40, 40), 4: (20, 40)}
    for i, (h, w) in sizes.items():
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(
            root / "val2017" / f"{i:012d}.jpg"
        )
    rle_mask = np.zeros((50, 70), np.uint8)
    rle_mask[10:30, 20:50] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")

    def ann(i, image, category, bbox, segmentation, crowd=0):
        return dict(
            id=i,
            image_id=image,
            category_id=category,
            bbox=bbox,
            area=bbox[2] * bbox[3],
            iscrowd=crowd,
            segmentation=segmentation,
        )

    anns = [
        ann(1, 1, 3, [10, 5, 30, 20], [[10, 5, 40, 5, 40, 25, 10, 25]]),
        ann(2, 2, 7, [20, 10, 30, 20], rle),
        ann(3, 2, 7, [0, 0, 10, 10], rle, crowd=1),
        ann(4, 1, 3, [50, 50, 0.5, 10], [[50, 50, 50.5, 50, 50.5, 60, 50, 60]]),
        ann(5, 4, 3, [1, 1, 5, 5], [[1, 1, 6, 1, 6, 6, 1, 6]]),
    ]
    dataset = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w}
            for i, (h, w) in sizes.items()
        ],
        "annotations": anns,
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "truck"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(dataset))
    return root


def test_coco_files_are_read_as_mmdet_filters_them(tmp_path):
    root = coco_folder(tmp_path / "coco")
    train = instances.CocoSource(root, "val2017", training=True)
    test = instances.CocoSource(root, "val2017", training=False)
    # training leaves out image 3 (no objects) and image 4 (20 pixels high); evaluation keeps all
    assert [train.image_id(i) for i in range(len(train))] == [1, 2]
    assert len(test) == 4 and train.class_names == ["car", "truck"]
    assert train.category_ids() == [3, 7]
    first, second = train[0], train[1]
    # image 1: the polygon, not the box under a pixel wide; labels are 0-based in category order
    assert first.boxes.tolist() == [[10.0, 5.0, 40.0, 25.0]] and first.labels.tolist() == [0]
    assert first.masks.shape == (1, 60, 80) and first.masks[0, 6:24, 11:39].all()
    # image 2: the RLE mask; the crowd region is not trained on
    assert (
        second.labels.tolist() == [1]
        and (second.masks[0] == np.asarray(np.zeros((50, 70)), np.uint8)).sum() < 50 * 70
    )
    assert second.masks[0].sum() == 600
    missing = tmp_path / "nothing"
    with pytest.raises(Exception, match="instances_val2017.json is missing"):
        instances.CocoSource(missing, "val2017", training=False)


def test_a_coco_format_dataset_trains_and_evaluates_through_the_task(tmp_path):
    """dataset.name and data_dir of any COCO-format folder: the loader's batches and the evaluator
    (COCO's own category ids in its results; every image of the split counted once)."""
    root = coco_folder(tmp_path / "coco")
    c = tiny_config(channels=16, fc_channels=32, rpn_train_pre=100, rpn_test_pre=100, rpn_post=50)
    c.dataset.name, c.dataset.data_dir = "mini", str(root)
    c.dataset.train_split = c.dataset.eval_split = "val2017"
    c.dataset.num_classes, c.batch_size = 2, 8
    task = tasks.create(c)
    assert task.train_examples() == 2
    mesh = sharding.make_mesh()
    batch = next(task.train_loader(sharding.batch_sharding(mesh)))
    assert batch["gt_masks"].shape == (8, 4, 128, 128) and batch["image"].shape == (8, 128, 128, 3)
    assert int(np.asarray(batch["gt_valid"]).sum()) == 8  # one object in each of 8 draws
    net = nets.build(task.spec, rngs=nnx.Rngs(0))
    model_def, _ = nets.ModelDef.from_spec(task.spec)
    (evaluator,) = task.evaluators(mesh, nets.predict_fn(model_def))
    ids, rows = evaluator.detections(nets.weights_of(net))
    assert sorted(ids) == [1, 2, 3, 4] and {r["category_id"] for r in rows} <= {3, 7}
    assert evaluator(nets.weights_of(net))["count"] == 4
