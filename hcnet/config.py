"""Experiment configs: every field with its default, loading `path.py[:arg]` and config.json, and
what the fields imply (the model's arguments, the schedule's step counts).

Configs in `configs/` start from `defaults()` and change what their experiment needs; whether a
config can work is hcnet.checks'.
"""

import importlib.util
import json
import os

import ml_collections

from hcnet import paths
from hcnet.errors import ConfigError


def defaults() -> ml_collections.ConfigDict:
    """Every field a config may set. The values are HcNet-T's reference recipe, held here once
    (configs/hcnet_t.py names the source of each)."""
    c = ml_collections.ConfigDict()
    c.task = "classification"  # what is trained and evaluated: hcnet.tasks.TASKS
    c.seed = 0
    c.batch_size = 1024  # global, per optimizer update (micro-batches: optim.accum_steps)
    c.eval_batch_size = 0  # 0: batch_size
    c.epochs = 300.0  # used when total_steps is 0
    c.total_steps = 0
    c.log_every_steps = 100
    c.eval_every_steps = 0  # 0: evaluate at the end only
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3  # the latest N, plus the one with the best `best_metric`
    c.best_metric = (
        "eval/top1"  # an evaluator's metric, "<name>/<metric>"; higher is better, *loss lower
    )
    c.checkpoint_async = True
    # faults (docs/reliability.md), in seconds: how long the run's own writes to Cloud Storage are
    # retried; how long a step may take before the watchdog stops the run (0: 20 steps at the
    # measured pace, at least 120 s) and how long compiling, an evaluation or a save may (0: no
    # watchdog); how long a peer process may go silent before every process stops
    c.storage_retry_s = 300.0
    c.step_timeout = 0.0
    c.phase_timeout = 1800.0
    c.peer_timeout = 60.0
    # (first, last): a jax.profiler trace of steps first + 1 to last in workdir/profile
    c.profile_steps = (0, 0)
    # more evaluations beside `eval` (dataset.eval_split), at every eval step and in eval.py, each
    # reported as <name>/top1 ...: dicts of name and split, and optionally dataset, data_dir,
    # image_size, crop_pct (default: config.dataset's) and label_key (default "label"; a set of
    # labels per image, as imagenet2012_real's "real_label", is scored as ReaL), e.g.
    # (dict(name="val_288", split="validation", image_size=288, crop_pct=1.0), dict(name="real",
    # dataset="imagenet2012_real", split="validation", label_key="real_label"), dict(name="v2",
    # dataset="imagenet_v2/matched-frequency", split="test"))
    c.evals = ()

    c.model = ml_collections.ConfigDict(
        dict(
            variant="T",
            depths=(),
            dims=(),  # depths/dims, when given, replace the variant's
            heat_operator="mean8",
            k_mode="input",
            k_value=0.5,
            ra_filter=True,
            mlp_ratio=4.0,
            drop_path=0.2,
            dropout=0.0,
            dtype="bfloat16",
            remat=False,
            conv_init="torch_default",
            # a stage's blocks: "scan" (one lax.scan), "unroll"; "auto": scan on TPU, else unroll
            block_loop="auto",
            depthwise_impl="auto",
        )
    )  # "auto": XLA's grouped convolution on TPU, shifted multiply-adds elsewhere
    c.dataset = ml_collections.ConfigDict(
        dict(
            name="imagenet2012",
            data_dir="",
            train_split="train",
            eval_split="validation",
            image_size=224,
            num_classes=1000,
            crop_pct=0.875,
            scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3),
            hflip=0.5,
            draft=True,
            threads=8,
            workers=0,
            prefetch=2,
        )
    )
    c.augment = ml_collections.ConfigDict(
        dict(
            randaugment="rand-m9-mstd0.5-inc1",
            reprob=0.25,
            mixup=0.8,
            cutmix=1.0,
            mix_prob=1.0,
            switch_prob=0.5,
            smoothing=0.1,
            lut_impl="auto",
        )
    )  # RandAugment's tables: "auto" (one-hot contraction on TPU, gather elsewhere)
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-3,
            warmup_lr=5e-7,
            min_lr=5e-6,
            scale_by_batch=512,
            warmup_epochs=20.0,
            warmup_steps=-1,
            # the reference's per-step cosine; "poly": mmcv's poly decay (segmentation)
            schedule="cosine",
            power=1.0,  # poly's exponent
            milestones=(8, 11),  # "step": the epochs after which lr x gamma (mmdet's 1x)
            gamma=0.1,
            weight_decay=0.05,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            clip_norm=5.0,
            accum_steps=1,
            ema_decay=0.0,
            layer_decay=1.0,  # < 1: layer-wise lr decay for fine-tuning (hcnet.optim)
            trainable="",
        )
    )  # a regex of parameter paths that train, the rest frozen ("": all; "^head/": a probe)
    # start from another run's or checkpoint's weights (parameters only; the run's own checkpoints
    # win)
    c.init_from = ""  # a checkpoint directory, a training workdir or an export; local or gs://
    c.init_step = 0  # a workdir's checkpoint step (0: the latest)
    c.init_ema = False  # a workdir's EMA weights
    c.init_skip = ()  # regexes of parameter paths left at their fresh init (the head is also left
    #                               new when its shape differs, i.e. another number of classes)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2**18))
    # task="segmentation" (hcnet.tasks.segmentation): UperNet's heads, mmseg's pipeline and test;
    # the values are mmseg's ADE20K UperNet settings (configs/upernet_hcnet_t_ade20k.py gives the
    # sources)
    c.segmentation = ml_collections.ConfigDict(
        dict(
            channels=512,
            aux_channels=256,
            dropout=0.1,
            aux_weight=0.4,  # the heads, the auxiliary loss
            crop=(512, 512),
            scale=(2048, 512),
            ratio_range=(0.5, 2.0),  # (h, w); img_scale (long, short)
            cat_max_ratio=0.75,
            flip=0.5,
            photometric=True,
            eval_mode="slide",
            eval_stride=(341, 341),  # single-scale test: "slide"/"whole"
            ms_ratios=(),
            ms_flip=True,
        )
    )  # () or mmseg's (0.5, ..., 1.75)
    # task="detection" (hcnet.tasks.detection): Mask R-CNN's heads and mmdet's pipeline; the values
    # are Swin's mask_rcnn_swin_fpn settings (configs/mask_rcnn_hcnet_t_coco_1x.py gives the
    # sources)
    c.detection = ml_collections.ConfigDict(
        dict(
            canvas=(1344, 1344),  # (h, w): the static padded size every image is placed on
            scales=((1333, 800),),  # mmdet img_scale (long, short); several: one drawn per image
            crop_branch=False,  # Swin's: half the images resized 400-600, cropped 384-600, resized
            flip=0.5,
            test_scale=(1333, 800),
            max_instances=100,  # ground truth per image (more are cut, and said once each)
            channels=256,
            fc_channels=1024,
            mask_convs=4,
            rpn_train_pre=2000,
            rpn_test_pre=1000,
            rpn_post=1000,
            rpn_samples=256,
            roi_samples=512,
            rcnn_pre=2000,
            max_detections=100,
            sampling_ratio=2,
        )
    )
    return c


# config.augment without the recipe's randomness beyond crops and flips (label smoothing stays the
# config's): small data, probes, benchmarks
NO_AUGMENTATION = {"randaugment": "", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0}


def from_file(spec: str) -> ml_collections.ConfigDict:
    """The config of 'configs/x.py' or 'configs/x.py:arg' (get_config(arg)), as --config reads
    it."""
    path, _, arg = spec.partition(":")
    file = paths.local(path, "--config", "a config is a Python file on this machine; copy it here")
    if not file.is_file():
        raise ConfigError(f"--config={spec}: no such file; the configs are in configs/*.py")
    module_spec = importlib.util.spec_from_file_location(
        f"hcnet_config_{file.stem}", os.fspath(file)
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def model_kwargs(c) -> dict:
    """config.model as hcnet.model.model_spec's arguments (empty depths / dims: the variant's)."""
    m = dict(c.model)
    return {
        **m,
        "variant": m["variant"] or None,
        "depths": tuple(m["depths"]) or None,
        "dims": tuple(m["dims"]) or None,
    }


def steps(c, train_examples: int) -> tuple[int, int, int]:
    """(total optimizer steps, warmup steps, steps per epoch) for a train split of `train_examples`.

    As the reference counts them: an epoch is floor(examples / batch) updates (its loader drops the
    last partial batch), total = int(epochs x that), warmup = int(warmup_epochs x that).
    """
    per_epoch = max(1, train_examples // c.batch_size)
    total = c.total_steps or max(1, int(c.epochs * per_epoch))
    warmup = (
        c.optim.warmup_steps
        if c.optim.warmup_steps >= 0
        else int(c.optim.warmup_epochs * per_epoch)
    )
    if warmup >= total:
        raise ConfigError(
            f"config.optim.warmup_steps={warmup} (from warmup_epochs={c.optim.warmup_epochs}) must "
            "be "
            f"below the {total} total steps"
        )
    return total, warmup, per_epoch


def from_json(text: str) -> ml_collections.ConfigDict:
    """A config written as JSON (a run's config.json) over today's defaults."""
    c = defaults()
    c.update_from_flattened_dict(flatten(json.loads(text)))
    return c


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict as {"a.b": value}, lists as tuples (what a ConfigDict takes)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out
