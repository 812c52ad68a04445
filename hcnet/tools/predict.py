"""Top-k classes of image files from a checkpoint or a training workdir.

    python -m hcnet.tools.predict --checkpoint=/tmp/hcnet-quickstart digit.png photo.jpg [--ema] \\
        [--top=5] [--json]

A detection checkpoint (Mask R-CNN) prints each detection (score, class, box) and draws them with
their masks as --out/<stem>_detections.png.

A segmentation checkpoint (UperNet) labels every pixel instead, at the image's own size, as its
run's single-scale test does; --out is where the masks (<stem>_mask.png, class ids) and the overlays
(<stem>_overlay.png, with a legend) go:

    python -m hcnet.tools.predict --checkpoint=/tmp/hcnet-seg-quickstart photo.jpg --out=/tmp/masks

A file that cannot be read is reported in one line (`skipped FILE: reason`) and the others are still
predicted; a last line then says how many were skipped, and the exit status is 1.
"""

import json

from absl import flags

from hcnet import tools
from hcnet.errors import UserError

flags.DEFINE_integer("top", 5, "how many classes per image", lower_bound=1)
for _name in ("checkpoint", "ema", "image_size", "crop_pct", "json", "out"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet import trained
    from hcnet.serve import predict, visualize

    tools.require_flags(checkpoint=FLAGS.checkpoint)
    if len(argv) < 2:
        raise UserError("give one or more image files after the flags")
    source = trained.open(FLAGS.checkpoint)
    if source.is_detection:
        tools.require_flags(out=FLAGS.out)
        results, failed = visualize.detect_files(source, argv[1:], FLAGS.out, ema=FLAGS.ema)
        describe = _detection_lines
    elif source.is_segmentation:
        tools.require_flags(out=FLAGS.out)
        results, failed = visualize.segment_files(source, argv[1:], FLAGS.out, ema=FLAGS.ema)
        describe = _segmentation_lines
    else:
        results, failed = predict.classify(
            source,
            argv[1:],
            ema=FLAGS.ema,
            top=FLAGS.top,
            image_size=FLAGS.image_size,
            crop_pct=FLAGS.crop_pct,
        )
        describe = _classification_lines
    if FLAGS.json:
        print(json.dumps({"predictions": results, "skipped": dict(failed)}))
    else:
        for f, r in results.items():
            print("\n".join(describe(f, r)))
    tools.report_skipped(failed, len(argv) - 1, "was predicted")


def _detection_lines(f, written) -> list[str]:
    rows = [
        f"  {d['score']:6.3f}  {d['name']}  ({d['class']})  box "
        + " ".join(f"{v:.1f}" for v in d["box"])
        for d in written["detections"]
    ]
    return [f"{f}: {written['figure']}", *(rows or ["  nothing above the score threshold"])]


def _segmentation_lines(f, written) -> list[str]:
    shares = [
        f"  {c['share']:7.2%}  {c['name']}  ({c['class']})" for c in written["classes"][: FLAGS.top]
    ]
    return [f"{f}: {written['overlay']}", *shares]


def _classification_lines(f, rows) -> list[str]:
    return [f, *(f"  {r['probability']:7.2%}  {r['name']}  ({r['class']})" for r in rows)]


if __name__ == "__main__":
    tools.run(main, files=True)
