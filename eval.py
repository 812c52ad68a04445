"""Exact top-1/top-5 of a checkpoint on any split, resolution and crop; raw and EMA weights.

    # the run's own config and split
    python eval.py --workdir=/tmp/hcnet-quickstart
    python eval.py --config=configs/hcnet_t.py --checkpoint=/ckpt/hcnet-t [--split=validation]
        [--image_size=288] [--crop_pct=1.0] [--weights=raw,ema] [--step=N] [--out=FILE.json]
    # segmentation: mIoU, + multi-scale
    python eval.py --workdir=/tmp/hcnet-seg-quickstart --multiscale
    # detection: COCOeval's box and mask AP, + the detections in COCO's results format
    python eval.py --workdir=/tmp/hcnet-det-quickstart

--checkpoint takes a checkpoint directory (convert/export) or a workdir; --workdir takes a training
workdir and, without --config, reads the dataset from the run's config.json. Prints a table and
writes the JSON report to --out (default
CHECKPOINT/eval/<dataset>_<split>_<size>_<crop>[_step<N>].json); a detector's detections go beside
it as <report>_eval_<raw|ema>_detections.json, the file COCO's test server takes.
"""

import json

from absl import flags, logging
from ml_collections import config_flags

from hcnet import tools
from hcnet.errors import UserError

config_flags.DEFINE_config_file(
    "config", None, "configs/*.py[:arg] for the dataset (default: the workdir's run)"
)
flags.DEFINE_string(
    "split", None, "TFDS split string, e.g. validation or 'validation[:1000]' (default: eval_split)"
)
flags.DEFINE_integer(
    "batch_size",
    None,
    "global evaluation batch (default: eval_batch_size or batch_size)",
    lower_bound=1,
)
flags.DEFINE_list("weights", None, "raw, ema or both (default: all the checkpoint has)")
flags.DEFINE_bool(
    "multiscale",
    False,
    "segmentation: also mmseg's multi-scale test with flip (`ms`; ratios "
    "config.segmentation.ms_ratios, or 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)",
)
# hcnet.tools' shared flags; --workdir is a training workdir (same as --checkpoint; its config.json
# is the default)
for _name in ("checkpoint", "workdir", "image_size", "crop_pct", "step", "out"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg's aug_test img_ratios


def main(argv):
    if FLAGS.verbosity == 0:
        logging.set_verbosity(logging.WARNING)
    path = FLAGS.checkpoint or FLAGS.workdir
    if not path or (FLAGS.checkpoint and FLAGS.workdir and FLAGS.checkpoint != FLAGS.workdir):
        raise UserError("give one of --checkpoint=DIR or --workdir=DIR")
    from hcnet import eval_report, paths, trained

    c = FLAGS.config if FLAGS.config is not None else trained.read_config(path)
    for field, value in (
        ("eval_split", FLAGS.split),
        ("image_size", FLAGS.image_size),
        ("crop_pct", FLAGS.crop_pct),
    ):
        if value is not None:
            c.dataset[field] = value
    if FLAGS.multiscale:
        c.segmentation.ms_ratios = tuple(c.segmentation.ms_ratios) or MS_RATIOS
    if FLAGS.batch_size:
        c.eval_batch_size = FLAGS.batch_size
    report = eval_report.evaluate(c, path, step=FLAGS.step, weights=FLAGS.weights)
    print(eval_report.report_table(report))
    out = paths.path(FLAGS.out) if FLAGS.out else eval_report.default_out(report)
    if not paths.is_remote(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    for name, rows in report.pop("detections", {}).items():  # COCO's results format, per weights
        file = out.with_name(f"{out.stem}_{name}_detections.json")
        file.write_text(json.dumps(rows))
        print(f"wrote {file} ({len(rows)} detections, COCO's results format)")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    tools.run(main, cluster=True)  # several processes join first; see hcnet/cluster.py
