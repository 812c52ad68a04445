"""Configs: every shipped config validates; a bad field stops with one line before anything
compiles."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from hcnet import config as config_lib
from hcnet import tasks
from hcnet.errors import ConfigError
from hcnet.model import VARIANTS

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = [
    "hcnet_t.py",
    "hcnet_s.py",
    "hcnet_b.py",
    "quickstart.py",
    "smoke.py",
    "ablate_ra_filter.py",
    "ablate_k.py:input",
    "ablate_k.py:learned",
    "ablate_k.py:0.3",
    "ablate_operator.py:learned5",
    "digits_transfer.py:pretrain",
    "digits_transfer.py:scratch",
    "seg_quickstart.py",
]
FINE_TUNES = [
    "finetune_t_384.py",
    "linear_probe.py",
    "transfer_folder.py",
    "digits_transfer.py:finetune",
    "upernet_hcnet_t_ade20k.py",
    "upernet_hcnet_b_ade20k.py",
]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate_and_document_their_command(name):
    c = config_lib.from_file(str(ROOT / "configs" / name))
    tasks.validate(c, num_devices=8)
    doc = (ROOT / "configs" / name.split(":")[0]).read_text()
    assert f"python train.py --config=configs/{name.split(':')[0]}" in doc and "Hardware" in doc
    spec = tasks.create(c).spec
    assert (
        spec.get("decoder", spec)["num_classes"] == c.dataset.num_classes
    )  # a segmentation head's, or the classifier's


@pytest.mark.parametrize("name", FINE_TUNES)
def test_fine_tuning_configs_stop_in_one_line_until_given_their_starting_checkpoint(name):
    c = config_lib.from_file(str(ROOT / "configs" / name))
    with pytest.raises(
        ConfigError,
        match=r"^config.init_from='required': this config fine-tunes: give the "
        r"checkpoint to start from, --config.init_from=",
    ):
        tasks.validate(c, num_devices=8)
    c.init_from = "/runs/pretrained"
    tasks.validate(c, num_devices=8)
    assert (
        f"python train.py --config=configs/{name.split(':')[0]}"
        in (ROOT / "configs" / name.split(":")[0]).read_text()
    )


def test_swins_ade20k_upernet_recipe_in_the_segmentation_configs():
    c = config_lib.from_file(str(ROOT / "configs/upernet_hcnet_t_ade20k.py"))
    o, s = c.optim, c.segmentation
    assert (c.task, c.dataset.name, c.dataset.num_classes, c.batch_size, c.total_steps) == (
        "segmentation",
        "hcnet_ade20k",
        150,
        16,
        160_000,
    )
    assert (o.schedule, o.power, o.lr, o.b1, o.b2, o.weight_decay, o.min_lr, o.warmup_steps) == (
        "poly",
        1.0,
        6e-5,
        0.9,
        0.999,
        0.01,
        0.0,
        1500,
    )
    assert (
        o.warmup_lr / o.lr == pytest.approx(1e-6)
        and o.scale_by_batch == 0
        and c.model.drop_path == 0.3
    )
    assert (s.channels, s.aux_channels, s.dropout, s.aux_weight) == (512, 256, 0.1, 0.4)
    assert (s.crop, s.scale, s.ratio_range, s.cat_max_ratio, s.flip, s.photometric) == (
        (512, 512),
        (2048, 512),
        (0.5, 2.0),
        0.75,
        0.5,
        True,
    )
    assert (s.eval_stride, c.best_metric) == ((341, 341), "eval/mIoU")
    assert (
        config_lib.from_file(str(ROOT / "configs/upernet_hcnet_b_ade20k.py")).model.variant == "B"
    )


def test_the_reference_recipe_in_hcnet_t():
    c = config_lib.from_file(str(ROOT / "configs/hcnet_t.py"))
    assert (c.model.variant, c.model.drop_path, c.epochs, c.optim.warmup_epochs) == (
        "T",
        0.2,
        300,
        20,
    )
    assert (c.optim.lr, c.optim.warmup_lr, c.optim.min_lr, c.optim.scale_by_batch) == (
        1e-3,
        5e-7,
        5e-6,
        512,
    )
    assert (c.optim.weight_decay, c.optim.clip_norm, c.augment.smoothing) == (0.05, 5.0, 0.1)
    assert (c.augment.mixup, c.augment.cutmix, c.augment.reprob) == (0.8, 1.0, 0.25)
    total, warmup, per_epoch = config_lib.steps(c, 1_281_167)
    assert (total, warmup, per_epoch) == (
        375_300,
        25_020,
        1251,
    )  # the reference: 1251 updates an epoch
    assert VARIANTS[config_lib.from_file(str(ROOT / "configs/hcnet_b.py")).model.variant][
        "depths"
    ] == (
        10,
        10,
        28,
        10,
    )
    ablation = config_lib.from_file(str(ROOT / "configs/ablate_k.py") + ":0.7")
    assert (ablation.model.k_mode, ablation.model.k_value) == ("fixed", 0.7)


BAD = [
    ({"optim.learning_rate": 1.0}, "config.optim.learning_rate is not a field"),
    ({"batch_size": 12}, "config.batch_size=12: must be a positive multiple of 8 devices"),
    (
        {"batch_size": 16, "optim.accum_steps": 4},
        "config.batch_size=16: must be a positive multiple of 8 devices x 4",
    ),
    ({"optim.lr": -0.001}, "config.optim.lr=-0.001: must be >= 0"),
    ({"model.variant": "XL"}, "config.model.variant='XL': one of mu, T, S, B"),
    (
        {"model.heat_operator": "mean4"},
        "config.model.heat_operator='mean4': one of mean8, learned3, learned5",
    ),
    ({"model.k_mode": "fixed", "model.k_value": 1.5}, "config.model.k_value=1.5"),
    ({"mesh.fsdp": 3}, "config.mesh.fsdp=3: a positive divisor of the 8 devices"),
    ({"augment.randaugment": "rand-x"}, "config.augment.randaugment='rand-x'"),
    ({"augment.lut_impl": "table"}, "config.augment.lut_impl='table': one of auto, gather, onehot"),
    (
        {"model.block_loop": "scan", "model.dropout": 0.1},
        "model.block_loop='scan' with model.dropout=0.1: a scanned",
    ),
    ({"model.block_loop": "loop"}, "config.model.block_loop='loop': one of auto, scan, unroll"),
    ({"model.dtype": "int8"}, "config.model.dtype='int8': one of float32, bfloat16, float16"),
    (
        {"optim.schedule": "exponential"},
        "config.optim.schedule='exponential': 'cosine' (the reference's), 'poly'",
    ),
    (
        {"task": "segmentation", "segmentation.eval_mode": "tiles"},
        "config.segmentation.eval_mode='tiles': 'slide' or",
    ),
    (
        {"task": "segmentation", "segmentation.crop": (512,)},
        "config.segmentation.crop=(512,): two positive integers",
    ),
    (
        {"task": "segmentation", "segmentation.ms_ratios": (0.5, 0.0)},
        "config.segmentation.ms_ratios=(0.5, 0.0): ()",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_fields_stop_with_one_line_naming_field_value_and_what_is_accepted(overrides, message):
    c = config_lib.from_file(str(ROOT / "configs/smoke.py"))
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        (c[section] if section else c)[leaf] = value
    with pytest.raises(config_lib.ConfigError) as e:
        tasks.validate(c, num_devices=8)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "evals, message",
    [
        (
            (dict(name="eval", split="validation"),),
            r"config.evals\[0\].name='eval': a new snake_case name \(taken: eval\)",
        ),
        (
            (dict(name="a", split="x"), dict(name="a", split="y")),
            r"config.evals\[1\].name='a': a new snake_case name",
        ),
        (
            (dict(name="b"),),
            r"config.evals\[0\]=\{'name': 'b'\}: a dict with name and split, and optionally "
            r"dataset",
        ),
        (
            (dict(name="c", split="test", crop_pct=1.5),),
            r"config.evals\[0\].crop_pct=1.5: must be in \(0, 1\]",
        ),
        (
            (dict(name="d", split="test", label_key="Real"),),
            r"config.evals\[0\].label_key='Real': a label feature's name",
        ),
    ],
)
def test_a_bad_extra_evaluation_is_one_line(evals, message):
    c = config_lib.from_file(str(ROOT / "configs/smoke.py"))
    c.evals = evals
    with pytest.raises(ConfigError, match="^" + message):
        tasks.validate(c, num_devices=8)


def test_a_trace_beside_a_libtpu_whose_profiler_crashes_is_refused_in_one_line(monkeypatch):
    """jax.profiler crashes (SIGSEGV) in a process that has loaded libtpu 0.0.45 or newer; with
    0.0.42.1 or 0.0.43.2, or none loaded, or no trace asked for, nothing is said. train.py's
    config.profile_steps and hcnet.tools.bench's --trace ask the same question."""
    import importlib.metadata

    from hcnet import hostenv, trainer

    monkeypatch.setattr(hostenv, "libtpu_loaded", lambda: True)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.52")
    with pytest.raises(ConfigError, match=r"^config.profile_steps=\(2, 4\): jax.profiler crashes "):
        trainer.check_profiler((2, 4))
    with pytest.raises(ConfigError, match=r"^--trace=/t: .* libtpu==0.0.43.2 "):
        hostenv.check_tracing("--trace=/t")
    trainer.check_profiler((0, 0))  # no trace
    for version in ("0.0.42.1", "0.0.43.2"):
        monkeypatch.setattr(importlib.metadata, "version", lambda name, v=version: v)
        trainer.check_profiler((2, 4))
    monkeypatch.setattr(hostenv, "libtpu_loaded", lambda: False)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.52")
    trainer.check_profiler((2, 4))  # installed, not loaded: the profiler works


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu installed")
def test_libtpu_counts_as_loaded_once_tpu_devices_are_made_not_when_jax_imports_it():
    """JAX imports the libtpu package wherever it is installed (a CPU run's trace is safe then);
    compile-only TPU devices load the library itself."""
    code = (
        "import sys, jax; from hcnet import hostenv; jax.devices(); a = hostenv.libtpu_loaded(); "
        "from hcnet.measure import targets; targets.devices('v5e-4'); "
        "print(a, 'libtpu' in sys.modules, hostenv.libtpu_loaded())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout.split() == ["False", "True", "True"]
