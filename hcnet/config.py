"""Experiment configs: every field with its default, loading `path.py[:arg]`, and validation.

Configs in `configs/` start from `defaults()` and change what their experiment needs. `validate`
stops a bad config before anything is built or compiled, with one line naming the field, the value
and what would be accepted.
"""

import importlib.util
import json
import math
import os
import re

import ml_collections

from hcnet import model as model_lib
from hcnet import paths, sharding
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
    c.profile_steps = (
        0,
        0,
    )  # (first, last): a jax.profiler trace of steps [first, last) in workdir/profile
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


def _unknown(config, schema, prefix=""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"config.{name} is not a field; fields here: {', '.join(sorted(schema))}"
            )
        if isinstance(schema[key], ml_collections.ConfigDict):
            _unknown(value, schema[key], f"{name}.")


def require(ok: bool, field: str, value, accepted: str) -> None:
    """Raises ConfigError 'config.<field>=<value>: <accepted>' unless ok."""
    if not ok:
        raise ConfigError(f"config.{field}={value!r}: {accepted}")


def model_kwargs(c) -> dict:
    """config.model as hcnet.model.model_spec's arguments (empty depths / dims: the variant's)."""
    m = dict(c.model)
    return {
        **m,
        "variant": m["variant"] or None,
        "depths": tuple(m["depths"]) or None,
        "dims": tuple(m["dims"]) or None,
    }


def validate(c, num_devices: int, *, training: bool = True) -> None:
    """Raises ConfigError on the first field that cannot work with `num_devices` devices;
    training=False checks only what evaluation reads. A task checks its own section
    (hcnet.tasks.create)."""
    _unknown(c, defaults())
    try:  # the model's and the mesh's own checks, named as config fields
        model_lib.check_args(**model_lib.model_spec(**model_kwargs(c)))
        sharding.check_mesh(c.mesh.data, c.mesh.fsdp, num_devices)
    except ConfigError as e:
        raise ConfigError(f"config.{e}") from None
    for field, value in _flatten(c.to_dict()).items():
        if isinstance(value, float):
            require(math.isfinite(value), field, value, "must be a finite number")
    m = c.model
    require(m.mlp_ratio > 0, "model.mlp_ratio", m.mlp_ratio, "must be > 0 (the reference's: 4)")
    d = c.dataset
    require(0 <= d.hflip <= 1, "dataset.hflip", d.hflip, "a probability in [0, 1]")
    require(d.threads >= 1, "dataset.threads", d.threads, "must be at least 1")
    for field in ("workers", "prefetch"):
        require(d[field] >= 0, f"dataset.{field}", d[field], "must be >= 0")
    require(c.mesh.fsdp_min_size >= 0, "mesh.fsdp_min_size", c.mesh.fsdp_min_size, "must be >= 0")
    require(d.image_size >= 32, "dataset.image_size", d.image_size, "must be at least 32")
    require(d.num_classes >= 1, "dataset.num_classes", d.num_classes, "must be at least 1")
    require(0 < d.crop_pct <= 1, "dataset.crop_pct", d.crop_pct, "must be in (0, 1]")
    if training:
        _validate_training(c, num_devices)
    eval_batch = c.eval_batch_size or c.batch_size
    require(
        eval_batch > 0 and eval_batch % num_devices == 0,
        "eval_batch_size",
        eval_batch,
        f"0 (batch_size) or a positive multiple of the {num_devices} devices",
    )


def _validate_training(c, num_devices: int) -> None:
    d, o = c.dataset, c.optim
    require(0 <= c.seed < 2**31, "seed", c.seed, "an integer in [0, 2**31)")
    require(
        0 < d.scale[0] <= d.scale[1] <= 1,
        "dataset.scale",
        d.scale,
        "(min, max) with 0 < min <= max <= 1",
    )
    require(
        o.schedule in ("cosine", "poly", "step"),
        "optim.schedule",
        o.schedule,
        "'cosine' (the reference's), 'poly' (mmcv's, segmentation) or 'step' (mmdet's, detection)",
    )
    require(
        0 < o.gamma <= 1 and all(m > 0 for m in o.milestones),
        "optim.milestones",
        (tuple(o.milestones), o.gamma),
        "positive epochs and 0 < gamma <= 1 (mmdet's 1x: (8, 11), 0.1)",
    )
    require(o.power > 0, "optim.power", o.power, "poly's exponent, > 0 (mmseg: 1.0)")
    require(o.accum_steps >= 1, "optim.accum_steps", o.accum_steps, "must be at least 1")
    require(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "must be >= 0")
    require(
        o.warmup_steps >= -1,
        "optim.warmup_steps",
        o.warmup_steps,
        "-1 (from warmup_epochs) or a number of steps >= 0",
    )
    require(c.epochs >= 0, "epochs", c.epochs, "must be >= 0 (used when total_steps is 0)")
    micro = num_devices * o.accum_steps
    require(
        c.batch_size > 0 and c.batch_size % micro == 0,
        "batch_size",
        c.batch_size,
        f"must be a positive multiple of {num_devices} devices x {o.accum_steps} accumulation "
        f"steps = {micro}",
    )
    for field in ("lr", "warmup_lr", "min_lr", "weight_decay", "clip_norm", "eps"):
        require(o[field] >= 0, f"optim.{field}", o[field], "must be >= 0")
    require(
        o.scale_by_batch >= 0,
        "optim.scale_by_batch",
        o.scale_by_batch,
        "the reference batch of the linear scaling rule (512), or 0 to use optim.lr as given",
    )
    for field in ("b1", "b2"):
        require(0 <= o[field] < 1, f"optim.{field}", o[field], "must be in [0, 1)")
    require(0 <= o.ema_decay < 1, "optim.ema_decay", o.ema_decay, "must be in [0, 1) (0: no EMA)")
    require(
        0 < o.layer_decay <= 1,
        "optim.layer_decay",
        o.layer_decay,
        "must be in (0, 1] (1: off; BEiT and MAE fine-tune with 0.65-0.75)",
    )
    for field, value in [
        ("optim.trainable", o.trainable),
        *((f"init_skip[{i}]", p) for i, p in enumerate(c.init_skip)),
    ]:
        try:
            re.compile(value)
        except re.error as e:
            raise ConfigError(
                f"config.{field}={value!r}: not a regular expression ({e}); e.g. '^head/'"
            ) from None
    require(
        c.init_step >= 0,
        "init_step",
        c.init_step,
        "a checkpoint step of init_from, or 0 for its latest",
    )
    require(
        c.init_from != "required",
        "init_from",
        c.init_from,
        "this config fine-tunes: give the checkpoint to start from, "
        "--config.init_from=WORKDIR_OR_EXPORT",
    )
    require(
        c.total_steps > 0 or c.epochs > 0,
        "total_steps",
        c.total_steps,
        "must be > 0, or 0 with config.epochs > 0",
    )
    for field in ("eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        require(c[field] >= 0, field, c[field], "must be >= 0 (0: off, or only at the end)")
    for field in ("storage_retry_s", "step_timeout", "phase_timeout"):
        require(c[field] >= 0, field, c[field], "seconds, >= 0")
    require(c.peer_timeout >= 5, "peer_timeout", c.peer_timeout, "seconds, at least 5")
    require(c.log_every_steps > 0, "log_every_steps", c.log_every_steps, "must be at least 1")
    require(
        len(c.profile_steps) == 2 and 0 <= c.profile_steps[0] <= c.profile_steps[1],
        "profile_steps",
        c.profile_steps,
        "(first, last) with 0 <= first <= last; (0, 0) for no trace",
    )


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
    c.update_from_flattened_dict(_flatten(json.loads(text)))
    return c


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out
