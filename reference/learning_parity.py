"""Learning parity: train.py beside the reference's loop in PyTorch, on the same photo crops (needs
torch).

    python -m reference.learning_parity --workdir=/tmp/hcnet-learning-parity [--seeds=0,1,2]
        [--inits=torch_default,trunc_normal] [--sides=jax,torch]

Data: 48 random square crops (an eighth to a third of the short side) of each of five of
scikit-image's sample photographs, written as ILSVRC2012 tars and prepared by the real imagenet2012
builder (once, under WORKDIR/tfds). Recipe: configs/learning_parity.py (mu, 64 px, 400 updates of
16, AdamW 1e-3, label smoothing 0.1; no RandAugment, erasing, mixup, cutmix or drop path), trained
on train[:80%] and scored on train[80%:].

jax: `python train.py` with that config, seed s, `model.conv_init` set to each init. torch:
reference.torch_model's statement of the network, initialised as the reference is (torch seed s;
with init trunc_normal the stem and downsampling convolutions are redrawn as the blocks' are),
trained by the reference's loop (reference.torch_model.train_steps) on the very batches train.py
reads with seed s (the project's loader), then converted and scored by the same evaluator as
train.py's.

Prints one row per run (held-out top-1, mean training loss over the last 40 updates, and how far the
stem's first convolution moved relative to its initial norm) and the means; writes
WORKDIR/results.json.
"""

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
from absl import flags, logging

from hcnet import paths, tools
from hcnet.errors import UserError

flags.declare_key_flag("workdir")  # data, runs and results.json go here
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds of both sides (init and data order)")
INITS = flags.DEFINE_list(
    "inits", ["torch_default", "trunc_normal"], "model.conv_init values to run"
)
SIDES = flags.DEFINE_list("sides", ["jax", "torch"], "jax (train.py), torch (the reference's loop)")
FLAGS = flags.FLAGS

ROOT = paths.REPO
CONFIG = ROOT / "configs" / "learning_parity.py"
PER_CLASS, CROP_SIZE, LAST = 48, 160, 40
CROP_SIDES = (0.125, 0.33)  # small crops: some show little of what tells the photographs apart


def _add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_tars(directory: paths.Path) -> paths.Path:
    """ILSVRC2012_img_{train,val}.tar: PER_CLASS crops of each photograph under the first five
    synsets."""
    from hcnet.data.sources import imagenet_synsets
    from reference.torch_model import PHOTOS, photo_crops

    directory.mkdir(parents=True, exist_ok=True)
    images, labels = photo_crops(PER_CLASS * len(PHOTOS), CROP_SIZE, seed=1, sides=CROP_SIDES)
    synsets = imagenet_synsets()[: len(PHOTOS)]
    with tarfile.open(directory / "ILSVRC2012_img_train.tar", "w") as train:
        for c, synset in enumerate(synsets):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i, a in enumerate(images[labels == c]):
                    _add(t, f"{synset}_{i}.JPEG", _jpeg(a))
            _add(train, f"{synset}.tar", inner.getvalue())
    with tarfile.open(
        directory / "ILSVRC2012_img_val.tar", "w"
    ) as val:  # the builder wants one; unused
        for i in range(len(PHOTOS)):
            _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(images[i]))
    return directory


def overrides(data_dir, seed: int, init: str) -> dict:
    """What one run changes in CONFIG: the same for train.py's flags and the PyTorch side's
    config."""
    return {"dataset.data_dir": str(data_dir), "seed": seed, "model.conv_init": init}


def config(data_dir, seed: int, init: str):
    from hcnet import config as config_lib

    c = config_lib.from_file(str(CONFIG))
    c.update_from_flattened_dict(overrides(data_dir, seed, init))
    return c


def run_jax(workdir: paths.Path, data_dir, seed: int, init: str) -> dict:
    from hcnet import monitor

    run_dir = workdir / "runs" / f"jax-{init}-{seed}"
    if not monitor.read_metrics(run_dir):
        flags_ = [f"--config.{k}={v}" for k, v in overrides(data_dir, seed, init).items()]
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "train.py"),
                f"--config={CONFIG}",
                f"--workdir={run_dir}",
                *flags_,
            ],
            check=True,
            cwd=ROOT,
        )
    rows = monitor.read_metrics(run_dir)

    def last(key):
        return [r[key] for r in rows if key in r][-1]

    return {"top1": last("eval/top1"), "loss": last("train/loss")}


def run_torch(data_dir, seed: int, init: str) -> dict:
    """The reference's loop on train.py's batches for this seed, scored by train.py's evaluator."""
    import jax
    import torch
    from flax.traverse_util import flatten_dict, unflatten_dict

    from hcnet import convert, nets, sharding, tasks
    from reference import torch_model

    c = config(data_dir, seed, init)
    task = tasks.create(c)
    mesh = sharding.make_mesh(-1, 1)
    loader = iter(task.train_loader(sharding.batch_sharding(mesh)))
    batches = []
    for _ in range(c.total_steps):
        b = jax.device_get(next(loader))
        batches.append((np.array(b["image"]), np.array(b["label"])))
    torch.manual_seed(seed)
    spec = task.spec
    model = torch_model.TorchHcNet(
        spec["depths"],
        spec["dims"],
        num_classes=spec["num_classes"],
        heat_operator=spec["heat_operator"],
        img_size=c.dataset.image_size,
        conv_init=init,
    )
    w0 = model.patch_embed.conv1.weight.detach().clone()
    o = c.optim
    trajectory = torch_model.train_steps(
        model,
        batches,
        steps=c.total_steps,
        lr=o.lr,
        warmup_lr=o.warmup_lr,
        min_lr=o.min_lr,
        warmup_steps=o.warmup_steps,
        weight_decay=o.weight_decay,
        clip_norm=o.clip_norm,
        smoothing=c.augment.smoothing,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
    )
    moved = float((model.patch_embed.conv1.weight.detach() - w0).norm() / w0.norm())
    model_def, wanted = nets.ModelDef.from_spec(spec)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    params = unflatten_dict(
        convert.torch_params(state, flatten_dict(wanted), spec["heat_operator"])
    )
    evaluator = task.evaluators(mesh, nets.predict_fn(model_def))[0]
    return {
        "top1": evaluator(params)["top1"],
        "loss": float(np.mean(trajectory["loss"][-LAST:])),
        "stem_moved": moved,
    }


def main(argv):
    tools.require_flags(workdir=FLAGS.workdir)
    logging.set_verbosity(logging.WARNING)
    bad = [s for s in SIDES.value if s not in ("jax", "torch")] + [
        i for i in INITS.value if i not in ("torch_default", "trunc_normal")
    ]
    if bad:
        raise UserError(
            f"{bad[0]!r}: --sides takes jax, torch and --inits torch_default, trunc_normal"
        )
    from hcnet.data import prepare

    workdir = paths.local(
        FLAGS.workdir,
        "--workdir",
        "the benchmark writes ImageNet-style tars and runs PyTorch on local files",
    )
    data_dir = workdir / "tfds"
    if not (data_dir / "imagenet2012").is_dir():
        prepare.prepare("imagenet2012", data_dir, make_tars(workdir / "tars"))
    results = []
    for side in SIDES.value:
        for init in INITS.value:
            for seed in map(int, SEEDS.value):
                r = (
                    run_jax(workdir, data_dir, seed, init)
                    if side == "jax"
                    else run_torch(data_dir, seed, init)
                )
                results.append({"side": side, "init": init, "seed": seed, **r})
                print(json.dumps(results[-1]), flush=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    from hcnet.monitor import text_table

    rows = []
    for side in SIDES.value:
        for init in INITS.value:
            rs = [r for r in results if r["side"] == side and r["init"] == init]
            rows.append(
                [
                    side,
                    init,
                    " ".join(f"{r['top1']:.3f}" for r in rs),
                    f"{np.mean([r['top1'] for r in rs]):.3f}",
                    " ".join(f"{r['loss']:.3f}" for r in rs),
                    f"{np.mean([r['loss'] for r in rs]):.3f}",
                    " ".join(f"{r['stem_moved']:.2f}" for r in rs) if side == "torch" else "-",
                ]
            )
    print(
        text_table(
            [
                "side",
                "init",
                "top-1 by seed",
                "mean",
                f"loss (last {LAST}) by seed",
                "mean",
                "stem conv moved",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    tools.run(main)
