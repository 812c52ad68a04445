"""A training run's directory: Orbax checkpoints, the resolved config, the model spec, the commit.

    WORKDIR/config.json        the config as run          WORKDIR/model.json  the HcNet arguments
    WORKDIR/commit.txt         git commit (+ "dirty")     WORKDIR/metrics.jsonl, events.out.tfevents.*
    WORKDIR/checkpoints/<step>/{params, ema, train, data}

`params`, `ema` and `train` (optimizer state, step, first non-finite step) are Orbax pytrees restored
onto whatever mesh the caller gives; `data` is the grain iterator state as JSON. Orbax writes each
step into a temporary directory and renames it when complete, so a save cut short by a kill is
never listed; a step that lists but does not read is skipped with a warning and the one before used.
"""
import json
import pathlib
import subprocess

import jax
import orbax.checkpoint as ocp
from flax import nnx
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from hcnet.checkpoint import SPEC_FILE, _jsonable, assemble, restore_target

CHECKPOINTS, CONFIG_FILE, COMMIT_FILE = "checkpoints", "config.json", "commit.txt"
BEST = "eval/top1"
TRAIN_KEYS = ("opt", "step", "bad")  # the "train" item: optimizer state, updates done, first bad step


def configure_orbax(min_replica_slice_bytes: int = 2 ** 24) -> None:
    """Replicated arrays under 16 MiB are written whole by one replica (a process-wide Orbax setting).

    Orbax splits every replicated array across its replicas to write in parallel, and the slicing
    compiles one small program per array and replica: about 8 s per save for HcNet-mu on 8 CPU devices,
    for nothing on arrays this small. train.py calls this at the top of main().
    """
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=min_replica_slice_bytes),
        override=True)


def is_workdir(path) -> bool:
    return (pathlib.Path(path) / CHECKPOINTS).is_dir() and (pathlib.Path(path) / SPEC_FILE).is_file()


def write_run_files(workdir, config, spec: dict) -> None:
    """config.json, model.json and commit.txt (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    (workdir / SPEC_FILE).write_text(json.dumps(_jsonable(spec), indent=2) + "\n")
    (workdir / COMMIT_FILE).write_text(git_commit() + "\n")


def git_commit() -> str:
    """The commit of the code that runs, with ' dirty' when it has uncommitted changes."""
    repo = pathlib.Path(__file__).resolve().parent.parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True).stdout
        return run("rev-parse", "HEAD").strip() + (" dirty" if run("status", "--porcelain", "-uno").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


class Checkpoints:
    """The run's CheckpointManager: async saves, the latest `keep` steps plus the best eval/top1."""

    def __init__(self, workdir, *, keep: int = 3, async_save: bool = True):
        keep_last = policies.LatestN(n=keep or None)
        keep_best = policies.BestN(get_metric_fn=lambda m: m[BEST], n=1, keep_checkpoints_without_metrics=False)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([keep_last, keep_best]),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINTS
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: dict, data_state: dict, metrics: dict | None = None) -> None:
        items = {"params": ocp.args.StandardSave(state["params"]),
                 "train": ocp.args.StandardSave({k: state[k] for k in TRAIN_KEYS}),
                 "data": ocp.args.JsonSave(data_state)}
        if "ema" in state:
            items["ema"] = ocp.args.StandardSave(state["ema"])
        best = {BEST: float(metrics[BEST])} if metrics and BEST in metrics else None
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=best, force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: dict):
        """(step, state, data state) of the newest readable checkpoint, or None; onto the given shardings."""
        for step in reversed(self.steps()):
            items = {"params": ocp.args.StandardRestore(abstract_state["params"]),
                     "train": ocp.args.StandardRestore({k: abstract_state[k] for k in TRAIN_KEYS}),
                     "data": ocp.args.JsonRestore()}
            if "ema" in abstract_state:
                items["ema"] = ocp.args.StandardRestore(abstract_state["ema"])
            try:
                got = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # a damaged step: say so, fall back to the one before
                logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                                self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            state = {"params": got["params"], **got["train"]}
            if "ema" in abstract_state:
                state["ema"] = got["ema"]
            return step, state, got["data"]
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_model(workdir, *, ema: bool = False, step: int | None = None, **overrides):
    """The model of a training run's latest (or `step`) checkpoint, raw or EMA weights, in eval mode."""
    workdir = pathlib.Path(workdir).absolute()
    graphdef, state, target = restore_target(workdir, overrides)
    item = "ema" if ema else "params"
    step = choose_step(workdir, step)
    if not (workdir / CHECKPOINTS / str(step) / item).is_dir():
        raise FileNotFoundError(f"{workdir / CHECKPOINTS / str(step)} has no {item!r} weights"
                                + (" (the run had optim.ema_decay=0)" if ema else ""))
    options = ocp.CheckpointManagerOptions(create=False)  # reads only; read_only=True logs warnings
    with ocp.CheckpointManager(workdir / CHECKPOINTS, options=options) as manager:
        params = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))[item]
    return nnx.view(assemble(graphdef, state, params), deterministic=True)


def choose_step(workdir, step: int | None = None) -> int:
    """`step` if the workdir has a complete checkpoint there, else (None) its latest; one line if neither."""
    options = ocp.CheckpointManagerOptions(create=False)  # reads only; read_only=True logs warnings
    with ocp.CheckpointManager(pathlib.Path(workdir).absolute() / CHECKPOINTS, options=options) as manager:
        steps = sorted(manager.all_steps())
    if not steps or (step is not None and step not in steps):
        raise FileNotFoundError(f"{pathlib.Path(workdir) / CHECKPOINTS}: no checkpoint "
                                f"{'at step %d ' % step if step is not None else ''}(steps there: {steps or 'none'})")
    return steps[-1] if step is None else step
