"""A training run's weights as a parameters-only checkpoint that `hcnet.load` reads (hcnet.tools.export)."""
from hcnet import checkpoint, paths, run_files


def export(run_dir, out, *, ema: bool = False, step: int | None = None) -> paths.Path:
    """Copies the chosen weights and the model spec of `run_dir` to the new directory `out` (either gs://)."""
    run_dir = paths.path(run_dir)
    paths.check(run_dir)
    if not checkpoint.is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir}: not a training workdir (expected model.json and checkpoints/)")
    model = checkpoint.load(run_dir, ema=ema, step=step)
    out = checkpoint.save(out, model, checkpoint.read_spec(run_dir))
    if (run_dir / run_files.CONFIG_FILE).is_file():  # image size, crop and dataset for predict and visualize
        paths.copy_file(run_dir / run_files.CONFIG_FILE, out / run_files.CONFIG_FILE)
    return out
