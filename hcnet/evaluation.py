"""Exact evaluation of a checkpoint (or a training workdir's checkpoint) on any split, size and crop.

Every example of the split is counted once: the last batch is padded and the padding masked out.
A workdir gives its raw weights and, when the run kept an EMA, its EMA weights. `eval.py` is the
command line; `evaluate_checkpoint` is the same for scripts and notebooks.
"""
import functools
import json
import pathlib

import jax
import ml_collections
from flax import nnx

from hcnet import checkpoint, sharding, trainer
from hcnet import workdir as workdir_lib
from hcnet.config import ConfigError, _check, defaults
from hcnet.data import augment, pipeline, sources


def config_of_workdir(path) -> ml_collections.ConfigDict:
    """The config a run wrote (config.json) over today's defaults."""
    file = pathlib.Path(path) / workdir_lib.CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{file}: no config.json there; give --config=configs/<the run's config>.py")
    c = defaults()
    c.update_from_flattened_dict(_flatten(json.loads(file.read_text())))
    return c


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def available_weights(path, step: int | None = None) -> tuple[int | None, list[str]]:
    """(checkpoint step or None for a parameters-only checkpoint, ["raw"] or ["raw", "ema"])."""
    path = pathlib.Path(path)
    if not workdir_lib.is_workdir(path):
        return None, ["raw"]
    step = workdir_lib.choose_step(path, step)
    has_ema = (path / workdir_lib.CHECKPOINTS / str(step) / "ema").is_dir()
    return step, ["raw", "ema"] if has_ema else ["raw"]


def check(c, num_devices: int) -> None:
    """The fields evaluation reads, in one line each (the training-only ones do not matter here)."""
    d = c.dataset
    _check(d.image_size >= 32, "dataset.image_size", d.image_size, "must be at least 32")
    _check(0 < d.crop_pct <= 1, "dataset.crop_pct", d.crop_pct, "must be in (0, 1]")
    batch = c.eval_batch_size or c.batch_size
    _check(batch > 0 and batch % num_devices == 0, "eval_batch_size", batch,
           f"a positive multiple of the {num_devices} devices")


def evaluate_checkpoint(c, path, *, step: int | None = None, weights=None) -> dict:
    """{"raw": metrics, "ema": metrics} (those available or asked) on c.dataset.eval_split, and what was run."""
    path = pathlib.Path(path).absolute()
    check(c, jax.device_count())
    spec_file = path / checkpoint.SPEC_FILE
    if not spec_file.is_file():
        raise FileNotFoundError(f"{path}: not an hcnet checkpoint or training workdir (no {checkpoint.SPEC_FILE})")
    unknown = [w for w in weights or () if w not in ("raw", "ema")]
    if unknown:
        raise ConfigError(f"weights={','.join(weights)}: each must be raw or ema")
    step, have = available_weights(path, step)
    weights = list(weights or have)
    missing = [w for w in weights if w not in have]
    if missing:
        raise FileNotFoundError(f"{path}: no {', '.join(missing)} weights here (available: {', '.join(have)})")
    d = c.dataset
    source = sources.open_split(d.name, d.eval_split, data_dir=d.data_dir or None, num_classes=d.num_classes,
                                image_size=d.image_size, field="dataset.eval_split")
    spec = json.loads(spec_file.read_text())
    if spec["num_classes"] != source.num_classes:
        raise ConfigError(f"the checkpoint's head has {spec['num_classes']} classes but {d.name} has "
                          f"{source.num_classes}; evaluate it on the dataset it was trained for")

    mesh = sharding.make_mesh(-1, 1)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    model, _ = trainer.Model.abstract(spec)
    recipe = augment.Recipe()
    eval_fn = jax.jit(functools.partial(trainer.eval_step, model=model, recipe=recipe),
                      in_shardings=(repl, batch_sh), out_shardings=repl)
    batch = c.eval_batch_size or c.batch_size
    results = {}
    for w in weights:
        net = checkpoint.load(path, ema=w == "ema", step=step)
        params = jax.device_put(nnx.to_pure_dict(nnx.state(net, nnx.Param)), repl)
        loader = pipeline.eval_loader(source, batch_sh, batch, image_size=d.image_size, crop_pct=d.crop_pct,
                                      threads=d.threads, prefetch=d.prefetch)
        results[w] = trainer.evaluate(eval_fn, params, loader)
    return {"checkpoint": str(path), "step": step, "dataset": d.name, "split": d.eval_split,
            "examples": len(source), "image_size": d.image_size, "crop_pct": d.crop_pct, "results": results}


def table(report: dict) -> str:
    """The report as an aligned text table, one row per weights."""
    head = ("weights", "step", "dataset", "split", "size", "crop", "top1", "top5", "loss", "count")
    rows = [(w, "-" if report["step"] is None else str(report["step"]), report["dataset"], report["split"],
             str(report["image_size"]), f"{report['crop_pct']:.3f}", f"{m['top1']:.4f}", f"{m['top5']:.4f}",
             f"{m['loss']:.4f}", str(m["count"])) for w, m in report["results"].items()]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(n) for v, n in zip(r, widths)).rstrip() for r in (head, *rows))


def default_out(report: dict) -> pathlib.Path:
    """CHECKPOINT/eval/<split>_<size>_<crop>[_step<N>].json, the split's brackets and colons made safe."""
    split = "".join(ch if ch.isalnum() or ch in "-_%" else "_" for ch in report["split"]).strip("_")
    step = "" if report["step"] is None else f"_step{report['step']}"
    return (pathlib.Path(report["checkpoint"]) / "eval"
            / f"{report['dataset']}_{split}_{report['image_size']}_{report['crop_pct']:g}{step}.json")
