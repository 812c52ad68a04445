"""The input benchmark runs and reports what BENCHMARKS.md quotes."""

import json

import pytest

from hcnet import tools
from hcnet.measure import data_bench as bench
from hcnet.tools import data_bench


def test_bench_host_part_reports_rates(capsys):
    tools.invoke(data_bench.main, ["--nodevice", "--seconds=0.05", "--image_size=64", "--json"])
    out = json.loads(capsys.readouterr().out)
    for key in (
        "train_images_per_s_per_core",
        "train_no_draft_images_per_s_per_core",
        "eval_images_per_s_per_core",
    ):
        assert out[key] > 0
    assert len(bench.imagenet_like_jpegs()) == len(bench.PHOTOS)


@pytest.mark.heavy
def test_bench_device_part_times_augmentation_against_a_step():
    out = bench.device_costs(batch=2, image_size=32, variant="mu", repeats=1)
    assert (
        0 < out["augment_s"]
        and 0 < out["step_s"]
        and out["augment_share"] == out["augment_s"] / out["step_s"]
    )
