"""A trained network as a user hands it over: a training workdir or a parameters-only checkpoint
(convert, export), local or gs://, opened once (`open`) and passed on.

    WORKDIR/config.json  the config as run      WORKDIR/model.json  the network's spec
    WORKDIR/commit.txt   git commit (+ "dirty")  WORKDIR/checkpoints/<step>/  (hcnet.checkpoint)
    DIR/model.json  DIR/params/  (+ DIR/config.json, copied by export)

`Trained` holds what the tools ask of one: its spec, its config (when it has one), the checkpoint
step, which weights it has, the evaluation preprocessing, the class names, and the weights
themselves.
"""

import dataclasses
import subprocess

import jax
from flax import nnx

from hcnet import checkpoint, nets, paths, sharding
from hcnet import config as config_lib
from hcnet.data import sources
from hcnet.errors import ConfigError

CONFIG_FILE, COMMIT_FILE = "config.json", "commit.txt"
WEIGHTS = ("raw", "ema")
DEFAULT_PREPROCESSING = (224, 0.875)  # image size and crop_pct without a config


def write_run_files(workdir, config, spec: dict) -> None:
    """config.json, model.json and commit.txt of a training run (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir = paths.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    commit = git_commit()

    def write():
        (workdir / CONFIG_FILE).write_text(text + "\n")
        checkpoint.write_spec(workdir, spec)
        (workdir / COMMIT_FILE).write_text(commit + "\n")

    paths.retried(workdir, write)


def read_config(directory):
    """The config a run wrote (config.json; export copies it) over today's defaults."""
    paths.check(directory)  # a bucket that is not there, said as such
    file = paths.path(directory) / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(
            f"{file}: no config.json there; give --config=configs/<the run's config>.py"
        )
    try:
        return config_lib.from_json(file.read_text())
    except ValueError as e:  # JSONDecodeError, or a value the config's fields do not take
        raise ConfigError(
            f"{file}: not a config.json this code can read ({str(e).splitlines()[0][:160]}); "
            "give --config=configs/<the run's config>.py"
        ) from None


def git_commit() -> str:
    """The commit of the code that runs, with ' dirty' when it has uncommitted changes."""

    def git(*args):
        done = subprocess.run(
            ["git", *args], cwd=paths.REPO, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        dirty = " dirty" if git("status", "--porcelain", "-uno") else ""
        return git("rev-parse", "HEAD") + dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained network's directory, read once: see the module's docstring."""

    path: paths.Path
    spec: dict
    config: object  # the run's config (config.json over today's defaults), or None
    step: int | None  # the chosen checkpoint of a run; None for a parameters-only directory
    available: tuple[str, ...]  # "raw", and "ema" when the run kept one

    @property
    def is_detection(self) -> bool:
        return self.spec.get("decoder", {}).get("kind") == "mask_rcnn"

    @property
    def is_segmentation(self) -> bool:
        return "decoder" in self.spec and not self.is_detection

    @property
    def num_classes(self) -> int:
        return (
            self.spec["decoder"]["num_classes"]
            if "decoder" in self.spec
            else self.spec["num_classes"]
        )

    def check_weights(self, weights) -> list[str]:
        """`weights` (None: all there are) as a list; one line for one the directory does not
        have."""
        weights = list(weights or self.available)
        unknown = [w for w in weights if w not in WEIGHTS]
        if unknown:
            raise ConfigError(f"weights={','.join(weights)}: each must be raw or ema")
        missing = [w for w in weights if w not in self.available]
        if missing:
            raise FileNotFoundError(
                f"{self.path}: no {', '.join(missing)} weights here (available: "
                f"{', '.join(self.available)})"
                + (" (the run had optim.ema_decay=0)" if self.step else "")
            )
        return weights

    def weights(self, target: dict, *, ema: bool = False) -> dict:
        """The raw (or EMA) weights restored onto `target`'s shapes, dtypes and shardings."""
        self.check_weights(["ema" if ema else "raw"])
        return checkpoint.restore_params(self.path, target, ema=ema, step=self.step)

    def predictor(self, *, ema: bool = False):
        """(predict, weights): the network's predict function (hcnet.nets.predict_fn) and its raw
        (or EMA) weights on the default device."""
        model_def, shapes = nets.ModelDef.from_spec(self.spec)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return nets.predict_fn(model_def), self.weights(sharding.placed(shapes, device), ema=ema)

    def model(self, *, ema: bool = False, **overrides) -> nnx.Module:
        """The network with its weights on the default device, in evaluation mode; overrides change
        arguments that do not touch the weights (e.g. dtype=jnp.bfloat16)."""
        model_def, shapes = nets.ModelDef.from_spec({**self.spec, **overrides})
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return model_def.eval_model(self.weights(sharding.placed(shapes, device), ema=ema))

    def preprocessing(self, image_size: int | None = None, crop_pct: float | None = None):
        """(image size, crop_pct) of evaluation: the given ones, else the run's, else 224 and
        0.875."""
        size, crop = DEFAULT_PREPROCESSING
        if self.config is not None:
            size, crop = self.config.dataset.image_size, self.config.dataset.crop_pct
        return image_size or size, crop_pct or crop

    def segmentation_test(self) -> dict:
        """The run's single-scale test (config.segmentation: mode, crop, stride, scale), or
        mmseg's."""
        s = (self.config or config_lib.defaults()).segmentation
        return {
            "mode": s.eval_mode,
            "crop": tuple(s.crop),
            "stride": tuple(s.eval_stride),
            "scale": tuple(s.scale),
        }

    def class_names(self) -> list[str]:
        """Names of the head's classes: ImageNet's, the run's dataset's, or 'class N'."""
        dataset = self.config.dataset if self.config is not None else None
        return sources.class_names(
            dataset,
            self.num_classes,
            segmentation=self.is_segmentation,
            detection=self.is_detection,
        )

    def detection_test(self) -> dict:
        """The run's test pipeline (config.detection: canvas, test scale), or Swin's."""
        d = (self.config or config_lib.defaults()).detection
        return {"canvas": tuple(d.canvas), "scale": tuple(d.test_scale)}


def open(path, *, step: int | None = None) -> Trained:  # noqa: A001  trained.open(path), as io.open
    """The trained network at `path` (a training workdir: its checkpoint `step`, default the latest;
    or a parameters-only directory); one line if it is neither."""
    path = paths.path(path)
    paths.check(path)
    is_run = (path / checkpoint.CHECKPOINTS).is_dir() and (path / checkpoint.SPEC_FILE).is_file()
    is_params = (path / checkpoint.SPEC_FILE).is_file() and (path / checkpoint.PARAMS_DIR).is_dir()
    if not (is_run or is_params):
        raise FileNotFoundError(
            f"{path}: not an hcnet checkpoint or training workdir (expected {checkpoint.SPEC_FILE} "
            "and "
            f"{checkpoint.PARAMS_DIR}/ as hcnet.tools.convert and hcnet.tools.export write them, "
            "or a "
            f"training run's {checkpoint.SPEC_FILE} and {checkpoint.CHECKPOINTS}/)"
        )
    available = ("raw",)
    if is_run:
        step = checkpoint.choose_step(path, step)
        if (path / checkpoint.CHECKPOINTS / str(step) / "ema").is_dir():
            available = WEIGHTS
    else:
        step = None
    config = read_config(path) if (path / CONFIG_FILE).is_file() else None
    return Trained(path, checkpoint.read_spec(path), config, step, available)


def load(path, *, ema: bool = False, step: int | None = None, **overrides) -> nnx.Module:
    """The model of a checkpoint directory, or of a training run's checkpoint, in evaluation mode.

    For a run, `ema=True` gives the EMA weights and `step` an older checkpoint. Overrides change
    HcNet arguments that do not touch the parameters, e.g. dtype=jnp.bfloat16. `path` may be
    gs://."""
    return open(path, step=step).model(ema=ema, **overrides)
