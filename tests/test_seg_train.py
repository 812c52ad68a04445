"""Segmentation end to end: train.py trains UperNet on HcNet-mu on real photographs (hcnet_collages)
from a classification checkpoint's backbone, and the run's checkpoint is evaluated (eval.py's path)
and predicted (masks and overlays)."""

import io
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import once_per_session
from PIL import Image
from runs import ROOT

from hcnet import config as config_lib
from hcnet import eval_report
from hcnet import trained as trained_lib
from hcnet.data import segmentation
from hcnet.errors import UserError
from hcnet.serve import export, visualize

STEPS = 80
CHANCE = (
    0.25  # a constant answer scores share / 4 <= 0.25 mIoU on 4 classes; a uniform guess about 0.14
)


@pytest.fixture(scope="session")
def seg_run(smoke_run, tmp_path_factory, worker_id):
    """configs/seg_quickstart.py cut to STEPS updates and 40 test collages, started from the smoke
    run's HcNet-mu: (workdir, data_dir, console). It runs as a user runs it: train.py, one process
    of one CPU device, at XLA's optimisation level 1 (this suite's level 0 runs the steps 4x slower;
    level 1 compiles 20 s faster than the default here). Once per session, shared by the xdist
    workers."""
    return once_per_session(
        tmp_path_factory, worker_id, "seg-run", lambda base: _train(base, smoke_run[0])
    )


def _train(base, init_from) -> tuple:
    workdir, data_dir = base / "run", base / "tfds"
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [
            *(
                f
                for f in env.get("XLA_FLAGS", "").split()
                if "device_count" not in f and "optimization_level" not in f
            ),
            "--xla_backend_optimization_level=1",
        ]
    )
    flags = {
        "total_steps": STEPS,
        "eval_every_steps": 0,
        "checkpoint_every_steps": 0,
        "log_every_steps": 20,
        "optim.warmup_steps": 10,
        "dataset.eval_split": "test[:40]",
        "dataset.data_dir": data_dir,
        "init_from": init_from,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config=configs/seg_quickstart.py",
            f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in flags.items()),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(workdir), str(data_dir), proc.stdout


@pytest.mark.heavy
def test_training_on_real_photographs_lifts_miou_far_above_chance_from_a_classification_backbone(
    seg_run,
):
    workdir, _, console = seg_run
    workdir = pathlib.Path(workdir)
    # the backbone's arrays came from the classification run, under backbone/; the heads are new
    loaded = re.search(
        r"init_from \S+ \(step 8\): (\d+) arrays loaded, 0 skipped on purpose, (\d+) new, (\d+) of "
        r"the "
        r"checkpoint's unused",
        console,
    )
    assert loaded, console
    config = json.loads((workdir / "model.json").read_text())
    assert config["decoder"]["kind"] == "upernet" and config["num_classes"] == 0
    assert int(loaded[3]) == 2  # the classification head's kernel and bias
    losses = [float(x) for x in re.findall(r"step \d+/\d+ .*? loss ([\d.]+)", console)]
    assert len(losses) == STEPS // 20 and losses[-1] < 0.8 * losses[0]
    final = re.search(r"step 80 eval: eval/mIoU ([\d.]+), eval/mAcc ([\d.]+)", console)
    assert final and float(final[1]) > 2 * CHANCE, console[-2000:]


def test_the_checkpoint_evaluates_as_trained_and_with_the_multi_scale_flip_test(seg_run):
    """eval.py's path on this process's 8 devices: the training run's single-scale mIoU (1 device),
    and the `ms` evaluator beside it; every test image counted once."""
    workdir, _, console = seg_run
    workdir = pathlib.Path(workdir)
    trained = float(re.search(r"step 80 eval: eval/mIoU ([\d.]+)", console)[1])
    c = config_lib.from_json((workdir / "config.json").read_text())
    c.segmentation.ms_ratios, c.segmentation.ms_flip = (1.0,), True
    report = eval_report.evaluate(c, workdir)
    got = report["results"]["raw"]
    assert got["count"] == 40 and got["ms/count"] == 40 and report["examples"] == 40
    # the same weights and images; another device count and XLA optimisation level round the logits
    # differently (float32, a few ulps), which can only flip the argmax of pixels whose two best
    # logits tie to that rounding. A margin, not a tolerance: 2e-3 of mIoU is about 140 flipped
    # pixels per class (unions of ~70,000 of the 276,480 pixels), far more ties than a trained
    # network leaves; a real difference (another image size, BatchNorm in training mode) moves mIoU
    # by tenths
    assert got["mIoU"] == pytest.approx(trained, abs=2e-3)
    assert got["ms/mIoU"] > 2 * CHANCE and 0 < got["aAcc"] <= 1
    text = eval_report.report_table(report)
    assert "mIoU" in text.splitlines()[0] and len(text.splitlines()) == 3
    assert eval_report.default_out(report).name == "hcnet_collages_test__40_whole_ms_step80.json"


def test_an_exported_segmentation_checkpoint_predicts_masks_and_overlays(seg_run, tmp_path):
    """The run exported as a checkpoint (its BatchNorm statistics with it), then
    hcnet.serve.visualize (and predict) on it: a mask PNG of class ids at the image's own size that
    mostly names the right photograph, an overlay with its legend; an unreadable file is skipped.
    Serving formats say in one line that they are for classifiers."""
    workdir = export.export(seg_run[0], tmp_path / "export")
    with pytest.raises(
        UserError, match="is a segmentation network: it exports as --format=checkpoint"
    ):
        export.export_stablehlo(workdir, tmp_path / "served")
    image, truth = segmentation.collage(7, "test", segmentation.collage_photos())
    (tmp_path / "collage.png").write_bytes(_png(image))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    written, failed = visualize.visualize(
        trained_lib.open(workdir),
        [tmp_path / "collage.png", tmp_path / "broken.jpg"],
        tmp_path / "out",
    )
    assert [f for f, _ in failed] == [str(tmp_path / "broken.jpg")]
    files = written[str(tmp_path / "collage.png")]
    mask = np.asarray(Image.open(files["mask"]))
    assert mask.shape == truth.shape and mask.max() < 4
    assert (mask == truth).mean() > 0.7
    overlay = Image.open(files["overlay"])
    assert (
        overlay.size[0] > 2 * overlay.size[1] * 96 / 72 * 0.8
    )  # image and overlay side by side, then the legend


def _png(a) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()
