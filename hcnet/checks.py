"""Whether a config can work: each field against what it takes, before anything is built or
compiled, stopped with one line naming the field, the value and what would be accepted. A task
checks its own section (hcnet.tasks) with `require`.
"""

import math
import re

import ml_collections

from hcnet import model as model_lib
from hcnet import sharding
from hcnet.config import defaults, flatten, model_kwargs
from hcnet.errors import ConfigError


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
    for field, value in flatten(c.to_dict()).items():
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
