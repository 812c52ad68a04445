"""A training run's own files beside its checkpoints: the config as run, the model spec, the commit.

    WORKDIR/config.json   the config as run      WORKDIR/model.json   the network's arguments
    WORKDIR/commit.txt    git commit (+ "dirty")
"""
import subprocess

import jax

from hcnet import checkpoint, paths
from hcnet import config as config_lib
from hcnet.errors import ConfigError

CONFIG_FILE, COMMIT_FILE = "config.json", "commit.txt"


def write(workdir, config, spec: dict) -> None:
    """config.json, model.json and commit.txt (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir = paths.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    checkpoint.write_spec(workdir, spec)
    (workdir / COMMIT_FILE).write_text(git_commit() + "\n")


def read_config(directory):
    """The config a run wrote (config.json; export copies it) over today's defaults."""
    file = paths.path(directory) / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{file}: no config.json there; give --config=configs/<the run's config>.py")
    return config_lib.from_json(file.read_text())


def git_commit() -> str:
    """The commit of the code that runs, with ' dirty' when it has uncommitted changes."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=paths.REPO, capture_output=True, text=True, check=True).stdout
        return run("rev-parse", "HEAD").strip() + (" dirty" if run("status", "--porcelain", "-uno").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
