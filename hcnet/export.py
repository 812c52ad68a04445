"""Write a training run's weights as a parameters-only checkpoint that `hcnet.load` reads.

    python -m hcnet.export --workdir=/tmp/hcnet-quickstart --out=/tmp/hcnet-mu-digits [--ema] [--step=N]
"""
import argparse
import json
import pathlib
import shutil
import sys

from hcnet import checkpoint, workdir


def export(run_dir, out, *, ema: bool = False, step: int | None = None) -> pathlib.Path:
    """Copies the chosen weights and the model spec of `run_dir` to the new directory `out`."""
    run_dir = pathlib.Path(run_dir)
    if not workdir.is_workdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: not a training workdir (expected model.json and checkpoints/)")
    model = workdir.load_model(run_dir, ema=ema, step=step)
    spec = json.loads((run_dir / checkpoint.SPEC_FILE).read_text())
    out = checkpoint.save(out, model, spec)
    if (run_dir / workdir.CONFIG_FILE).is_file():  # image size, crop and dataset for predict and visualize
        shutil.copyfile(run_dir / workdir.CONFIG_FILE, out / workdir.CONFIG_FILE)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the training run's --workdir")
    p.add_argument("--out", required=True, help="a new directory for the parameters-only checkpoint")
    p.add_argument("--ema", action="store_true", help="the EMA weights (runs with optim.ema_decay > 0)")
    p.add_argument("--step", type=int, default=None, help="an older checkpoint than the latest")
    args = p.parse_args(argv)
    try:
        out = export(args.workdir, args.out, ema=args.ema, step=args.step)
    except (FileNotFoundError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}; load it with hcnet.load({str(out)!r})")


if __name__ == "__main__":
    main()
