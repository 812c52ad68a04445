"""Exact evaluation of a trained network (a checkpoint or a training run's) on any split, size and
crop.

It runs the evaluators the config's task gives (the ones training runs), on the raw weights and,
when the run kept an EMA, the EMA weights. `eval.py` is the command line; `evaluate` is the same for
scripts and notebooks; `table` and `default_out` shape what eval.py prints and writes.
"""

import jax

from hcnet import monitor, nets, paths, sharding, tasks, trained, trainer


def evaluate(c, path, *, step: int | None = None, weights=None) -> dict:
    """{"results": {"raw": metrics, "ema": metrics}} (those available or asked) and what was run."""
    tasks.validate(c, jax.device_count(), training=False)
    task = tasks.create(c)
    if c.dataset.get("data_dir"):
        paths.check(c.dataset.data_dir)
    source = trained.open(path, step=step)
    weights = source.check_weights(weights)
    task.check_spec(source.spec)
    mesh = sharding.make_mesh()
    model_def, shapes = nets.ModelDef.from_spec(nets.for_mesh(source.spec, mesh))
    evaluators = task.evaluators(mesh, nets.predict_fn(model_def))
    target = sharding.placed(shapes, sharding.replicated(mesh))
    results, detections = {}, {}
    for w in weights:
        scalars = trainer.run_evaluators(
            evaluators, {"params": source.weights(target, ema=w == "ema")}
        )
        results[w] = {
            k.removeprefix("eval/"): v for k, v in scalars.items()
        }  # the main evaluator's: bare
        for ev in evaluators:  # a detector's last detections, in COCO's results format
            if getattr(ev, "results", None) is not None:
                detections[f"{ev.name}_{w}"] = ev.results
    evals = []
    for ev in evaluators:
        where = {"dataset": ev.source.name, "split": ev.source.split, "examples": len(ev.source)}
        evals.append(
            {
                "name": ev.name,
                **where,
                **ev.settings,
                "metrics": list(ev.metrics),
                "columns": ev.columns,
                "tag": ev.tag,
            }
        )
    main = {k: v for k, v in evals[0].items() if k not in ("name", "metrics", "columns", "tag")}
    return {
        "checkpoint": str(source.path),
        "step": source.step,
        **main,
        "evals": evals,
        "results": results,
        **({"detections": detections} if detections else {}),
    }


def report_table(report: dict) -> str:
    """The report as an aligned text table, one row per weights and evaluation: how each evaluation
    was run (its evaluator's columns: size and crop, or a segmentation test's mode, ratios and flip)
    and its metrics."""
    first = report["evals"][0]
    metrics = [m for m in first["metrics"] if m != "count"]
    head = ("weights", "step", "eval", "dataset", "split", *first["columns"], *metrics, "count")
    step = "-" if report["step"] is None else str(report["step"])
    rows = []
    for w, values in report["results"].items():
        for e in report["evals"]:
            prefix = "" if e["name"] == "eval" else f"{e['name']}/"
            shown = [_number(values, prefix + m) for m in (*metrics, "count")]
            how = [e["columns"].get(column, "-") for column in first["columns"]]
            rows.append((w, step, e["name"], e["dataset"], e["split"], *how, *shown))
    return monitor.text_table(head, rows)


def _number(values: dict, key: str) -> str:
    if key not in values:
        return "-"  # e.g. ReaL reports top1 only
    value = values[key]
    return str(value) if isinstance(value, int) else monitor.shown(value)


def default_out(report: dict) -> paths.Path:
    """CHECKPOINT/eval/<dataset>_<split>_<tag>[_step<N>].json, the tag naming the main evaluation
    (size and crop, or a segmentation test's mode and _ms), the split's brackets and colons made
    safe."""
    split = "".join(ch if ch.isalnum() or ch in "-_%" else "_" for ch in report["split"]).strip("_")
    step = "" if report["step"] is None else f"_step{report['step']}"
    name = f"{report['dataset']}_{split}_{report['evals'][0]['tag']}{step}.json"
    return paths.path(report["checkpoint"]) / "eval" / name
