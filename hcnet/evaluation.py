"""Exact evaluation of a checkpoint (or a training run's checkpoint) on any split, size and crop.

It runs the evaluators the config's task gives (the ones training runs), on the raw weights and,
when the run kept an EMA, the EMA weights. `eval.py` is the command line; `evaluate_checkpoint` is
the same for scripts and notebooks.
"""
import jax

from hcnet import checkpoint, monitor, paths, sharding, tasks, trainer
from hcnet import config as config_lib
from hcnet import model as model_lib
from hcnet.errors import ConfigError
from hcnet.model import ModelDef

WEIGHTS = ("raw", "ema")


def evaluate_checkpoint(c, path, *, step: int | None = None, weights=None) -> dict:
    """{"results": {"raw": metrics, "ema": metrics}} (those available or asked) and what was run."""
    path = paths.path(path)
    config_lib.validate(c, jax.device_count(), training=False)
    paths.check(path)
    if c.dataset.get("data_dir"):
        paths.check(c.dataset.data_dir)
    if not (path / checkpoint.SPEC_FILE).is_file():
        raise FileNotFoundError(f"{path}: not an hcnet checkpoint or training workdir (no {checkpoint.SPEC_FILE})")
    if any(w not in WEIGHTS for w in weights or ()):
        raise ConfigError(f"weights={','.join(weights)}: each must be raw or ema")
    step, have = checkpoint.weights_of(path, step)
    weights = list(weights or have)
    missing = [w for w in weights if w not in have]
    if missing:
        raise FileNotFoundError(f"{path}: no {', '.join(missing)} weights here (available: {', '.join(have)})")
    task = tasks.create(c)
    spec = checkpoint.read_spec(path)
    task.check_spec(spec)
    mesh = sharding.make_mesh()
    model_def, shapes = ModelDef.from_spec(model_lib.for_mesh(spec, mesh), task.build)
    evaluators = task.evaluators(mesh, model_def)
    target = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=sharding.replicated(mesh)), shapes)
    results = {}
    for w in weights:
        params = checkpoint.restore_params(path, target, ema=w == "ema", step=step)
        scalars = trainer.evaluate(evaluators, {"params": params})
        results[w] = {k.removeprefix("eval/"): v for k, v in scalars.items()}  # the task's main evaluator: bare
    evals = [{"name": ev.name, "dataset": ev.source.name, "split": ev.source.split, "examples": len(ev.source),
              **ev.settings, "metrics": list(ev.metrics)} for ev in evaluators]
    main = {k: v for k, v in evals[0].items() if k not in ("name", "metrics")}
    return {"checkpoint": str(path), "step": step, **main, "evals": evals, "results": results}


def table(report: dict) -> str:
    """The report as an aligned text table, one row per weights and evaluation: classification's top-1, top-5
    and loss at its size and crop, or segmentation's mIoU, mAcc and aAcc at its test mode and scales."""
    segmentation = "mIoU" in report["evals"][0]["metrics"]
    head = ("weights", "step", "eval", "dataset", "split",
            *(("mode", "ratios", "flip", "mIoU", "mAcc", "aAcc") if segmentation else
              ("size", "crop", "top1", "top5", "loss")), "count")
    rows = []
    for w, m in report["results"].items():
        for e in report["evals"]:
            key = lambda metric: metric if e["name"] == "eval" else f"{e['name']}/{metric}"
            number = lambda metric: f"{m[key(metric)]:.4f}" if key(metric) in m else "-"  # ReaL: top1 only
            how = ((e["mode"], ",".join(f"{r:g}" for r in e["ratios"]), str(e["flip"]), *map(number, ("mIoU", "mAcc", "aAcc")))
                   if segmentation else (str(e["image_size"]), f"{e['crop_pct']:.3f}", *map(number, ("top1", "top5", "loss"))))
            rows.append((w, "-" if report["step"] is None else str(report["step"]), e["name"], e["dataset"],
                         e["split"], *how, str(m[key("count")])))
    return monitor.text_table(head, rows)


def default_out(report: dict) -> paths.Path:
    """CHECKPOINT/eval/<dataset>_<split>_<size>_<crop>[_step<N>].json (segmentation: _<mode>[_ms] for size and
    crop), the split's brackets and colons made safe."""
    split = "".join(ch if ch.isalnum() or ch in "-_%" else "_" for ch in report["split"]).strip("_")
    step = "" if report["step"] is None else f"_step{report['step']}"
    how = (f"{report['image_size']}_{report['crop_pct']:g}" if "image_size" in report
           else report["mode"] + ("_ms" if len(report["evals"]) > 1 else ""))
    return paths.path(report["checkpoint"]) / "eval" / f"{report['dataset']}_{split}_{how}{step}.json"
