"""See what the heat conduction does inside a trained HcNet, for one image at a time.

    python -m hcnet.tools.visualize --checkpoint=/tmp/hcnet-quickstart digit.png \\
        --out=/tmp/hcnet-figures [--ema]

For each image it writes four PNGs and the numbers behind them (<stem>.json):
- <stem>_k.png: the heat-conduction coefficient k of every Hc-Ra block across depth. With the
  input-dependent k (k = sigmoid(W GAP(x)), one per channel) the line is the median over channels,
  the band the 10th-90th percentile, the faint band min-max; a learned or fixed k is one value.
- <stem>_temperature.png: each stage's output averaged over channels (the "temperature" field the
  blocks conduct), upsampled over the input.
- <stem>_spectrum.png: the radial power spectrum of the features after the stem and after every
  block (left), and the share of their energy above a quarter cycle per pixel (right). The paper's
  Figure 1c claim is that high frequencies fade as depth grows; each heat step is a low-pass filter.
- <stem>_gradcam.png: Grad-CAM of the predicted (or --class) class at each stage's output (the
  paper's Figure 5): ReLU(sum_c alpha_c A_c), alpha_c the spatial mean of d logit / d A_c, scaled to
  [0, 1].
"""

import json

import numpy as np

from hcnet import paths
from hcnet.errors import UserError
from hcnet.serve import predict
from hcnet.serve.analysis import HIGH, analyse, jsonable


# ---------------------------------------------------------------- the figures
def _upsample(m: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    m = np.asarray(m, np.float32)
    return np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.BILINEAR))


def _stage_spans(stage_of_block):
    spans, start = [], 0
    for s in sorted(set(stage_of_block)):
        n = stage_of_block.count(s)
        spans.append((s, start + 1, start + n))
        start += n
    return spans


def _save(fig, path) -> None:
    """The figure as a PNG at `path` (local or gs://)."""
    with paths.path(path).open("wb") as f:
        fig.savefig(f, format="png")


def write_png(a: np.ndarray, path) -> None:
    """A uint8 array as a PNG at `path` (local or gs://), one channel for (H, W)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    paths.path(path).write_bytes(buf.getvalue())


def palette(n: int) -> np.ndarray:
    """n distinct colours, uint8 (n, 3): matplotlib's tab10 (tab20 up to 20 classes), evenly turned
    hues beyond."""
    import colorsys

    from matplotlib import colormaps

    if n <= 20:
        return (
            (np.asarray(colormaps["tab10" if n <= 10 else "tab20"].colors[:n]) * 255)
            .round()
            .astype(np.uint8)
        )
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    rgb = [
        colorsys.hsv_to_rgb(h, 0.55 + 0.45 * (i % 3) / 2, 0.95 - 0.3 * (i % 2))
        for i, h in enumerate(hues)
    ]
    return (np.asarray(rgb) * 255).round().astype(np.uint8)


def plot_segmentation(
    image: np.ndarray,
    pred: np.ndarray,
    names: list[str],
    path,
    alpha: float = 0.55,
    legend: int = 20,
):
    """The image, and the predicted classes' colours over it with a legend of the classes present
    (the `legend` largest by area, each with its share of the pixels)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = palette(len(names))
    overlay = (1 - alpha) * image.astype(np.float32) + alpha * colours[pred].astype(np.float32)
    h, w = pred.shape
    fig = Figure(figsize=(2 * 4 * w / max(h, w) + 2, 4 * h / max(h, w) + 0.6), dpi=120)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    left.set_title("image")
    right.imshow(overlay.round().astype(np.uint8))
    right.set_title("predicted classes")
    for ax in (left, right):
        ax.axis("off")
    share = np.bincount(pred.ravel(), minlength=len(names)) / pred.size
    present = [c for c in np.argsort(-share, kind="stable") if share[c] > 0][:legend]
    fig.legend(
        handles=[
            Patch(color=colours[c] / 255, label=f"{names[c]} {share[c]:.0%}") for c in present
        ],
        loc="center right",
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    _save(fig, path)


def plot_detections(image: np.ndarray, detections, names: list[str], path, alpha: float = 0.45):
    """The image with each detection's mask in its class's colour, its box, and its class name
    and score."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    boxes, scores, labels, masks = detections
    colours = palette(len(names))
    shown = image.astype(np.float32)
    for m, c in zip(masks, labels):
        shown[m] = (1 - alpha) * shown[m] + alpha * colours[c]
    h, w = image.shape[:2]
    fig = Figure(figsize=(6 * w / max(h, w) + 0.2, 6 * h / max(h, w) + 0.2), dpi=120)
    ax = fig.subplots()
    ax.imshow(shown.round().astype(np.uint8))
    for (x1, y1, x2, y2), score, c in zip(boxes, scores, labels):
        colour = colours[c] / 255
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=1.5))
        ax.text(
            x1,
            y1,
            f"{names[c]} {score:.2f}",
            color="white",
            fontsize=7,
            va="bottom",
            bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "lw": 0},
        )
    ax.axis("off")
    fig.tight_layout(pad=0.1)
    _save(fig, path)


def _readable(files, failed: list):
    """(file, uint8 image) of each file that reads; the others go to `failed` with their reason."""
    for f in files:
        try:
            image = predict.read_image(f)
        except Exception as e:  # noqa: BLE001  unreadable or not an image: say so, keep going
            failed.append((str(f), predict.reason(e)))
            continue
        yield f, image


def detect_files(source, files, out, *, ema: bool = False, min_score: float = 0.3):
    """A Mask R-CNN's detections of image files (hcnet.serve.predict.detector), drawn as
    <out>/<stem>_detections.png (those scoring at least min_score). ({file: {"figure",
    "detections"}}, [(file, reason)]); "detections": class, name, score and box of each, best
    first."""
    detect = predict.detector(source, ema=ema)
    out = _output_dir(out)
    names, written, failed = source.class_names(), {}, []
    for f, image in _readable(files, failed):
        boxes, scores, labels, masks = detect(image)
        keep = scores >= min_score
        figure = out / f"{paths.path(f).stem}_detections.png"
        plot_detections(
            image, (boxes[keep], scores[keep], labels[keep], masks[keep]), names, figure
        )
        rows = [
            {"class": int(c), "name": names[c], "score": float(p), "box": [float(v) for v in b]}
            for b, p, c in zip(boxes[keep], scores[keep], labels[keep])
        ]
        written[str(f)] = {"figure": str(figure), "detections": rows}
    return written, failed


def plot_k(numbers: dict, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=120)
    ax = fig.add_subplot()
    ks = numbers["k"]
    x = np.arange(1, len(ks) + 1)
    q = np.array([np.percentile(k, [0, 10, 50, 90, 100]) for k in ks])
    ax.fill_between(
        x, q[:, 0], q[:, 4], color="tab:orange", alpha=0.15, label="min-max over channels"
    )
    ax.fill_between(
        x, q[:, 1], q[:, 3], color="tab:orange", alpha=0.35, label="10th-90th percentile"
    )
    ax.plot(x, q[:, 2], "o-", color="tab:red", label="median")
    for s, a, b in _stage_spans(numbers["stage_of_block"]):
        ax.axvspan(a - 0.5, b + 0.5, color="grey", alpha=0.08 * (s % 2))
        ax.text((a + b) / 2, 1.02, f"stage {s + 1}", ha="center", va="bottom", fontsize=8)
    ax.set(
        xlabel="block (depth)",
        ylabel="heat conduction coefficient k",
        ylim=(0, 1.08),
        xlim=(0.5, len(ks) + 0.5),
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _map_row(image: np.ndarray, maps: list, title: str, path, overlay: bool, cmap: str):
    """The input, then one panel per stage map upsampled to the input (over it when `overlay`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * (len(maps) + 1), 3.2), dpi=120)
    axes = fig.subplots(1, len(maps) + 1)
    axes[0].imshow(image)
    axes[0].set_title("input")
    for i, m in enumerate(maps):
        if overlay:
            axes[i + 1].imshow(image)
        axes[i + 1].imshow(
            _upsample(m, image.shape[0]),
            cmap=cmap,
            alpha=0.5 if overlay else None,
            **(dict(vmin=0, vmax=1) if overlay else {}),
        )
        axes[i + 1].set_title(f"stage {i + 1} ({m.shape[0]}x{m.shape[1]})")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    _save(fig, path)


def plot_temperature(image: np.ndarray, numbers: dict, path):
    _map_row(
        image,
        numbers["temperature"],
        "temperature: channel mean of each stage's output",
        path,
        overlay=False,
        cmap="inferno",
    )


def plot_spectrum(numbers: dict, path):
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=120)
    left, right = fig.subplots(1, 2)
    spectra = numbers["spectrum"]
    colors = colormaps["viridis"](np.linspace(0, 1, len(spectra)))
    for (f, p), c, name in zip(spectra, colors, numbers["spectrum_depth"]):
        left.semilogy(
            f,
            p / p.sum(),
            color=c,
            lw=1.2,
            label=name if name in ("stem", numbers["spectrum_depth"][-1]) else None,
        )
    left.set(
        xlabel="radial frequency (cycles / pixel)",
        ylabel="share of power",
        title="feature spectrum by depth",
    )
    left.legend(fontsize=8)
    share = numbers["high_frequency_share"]
    right.plot(np.arange(len(share)), share, "o-", color="tab:blue")
    right.set_xticks(
        np.arange(len(share)), ["stem", *[str(i) for i in range(1, len(share))]], fontsize=7
    )
    for s, a, b in _stage_spans(numbers["stage_of_block"]):
        right.axvspan(a - 0.5, b + 0.5, color="grey", alpha=0.08 * (s % 2))
    right.set(
        xlabel="block (depth)",
        ylabel=f"energy share above {HIGH} cycles/pixel",
        ylim=(0, None),
        title="high-frequency share",
    )
    fig.tight_layout()
    _save(fig, path)


def plot_grad_cam(image: np.ndarray, numbers: dict, label: str, path):
    _map_row(
        image,
        numbers["grad_cam"],
        f"Grad-CAM of '{label}' (p = {numbers['probability']:.2f})",
        path,
        overlay=True,
        cmap="jet",
    )


def segment_files(source, files, out, *, ema: bool = False) -> tuple[dict, list]:
    """Per-pixel classes of image files (a segmentation network, hcnet.serve.predict.segmenter),
    written as <out>/<stem>_mask.png (class ids, one channel) and <stem>_overlay.png (the classes'
    colours over the image, with a legend). ({file: {"mask", "overlay", "classes"}}, [(file,
    reason)]); "classes": the predicted classes by their share of the pixels."""
    segment = predict.segmenter(source, ema=ema)
    out = _output_dir(out)
    names, written, failed = source.class_names(), {}, []
    for f, image in _readable(files, failed):
        pred = segment(image)
        stem = paths.path(f).stem
        files_out = {"mask": out / f"{stem}_mask.png", "overlay": out / f"{stem}_overlay.png"}
        write_png(pred, files_out["mask"])
        plot_segmentation(image, pred, names, files_out["overlay"])
        paths_out = {k: str(v) for k, v in files_out.items()}
        written[str(f)] = {**paths_out, "classes": predict.class_shares(pred, names)}
    return written, failed


def _output_dir(out) -> paths.Path:
    out = paths.path(out)
    paths.check(out, write=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def visualize(
    source,
    files,
    out,
    *,
    ema: bool = False,
    target: int | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
) -> tuple[dict, list]:
    """({file: {figure name: path}}, [(file, reason) skipped]) of a trained network
    (hcnet.trained.Trained); the numbers go to <stem>.json. A segmentation network gets its
    predicted mask over each image, with a legend (`segment_files`)."""
    if source.is_segmentation:
        written, failed = segment_files(source, files, out, ema=ema)
        return {
            f: {k: v for k, v in w.items() if k != "classes"} for f, w in written.items()
        }, failed
    model = source.model(ema=ema)
    classes = source.num_classes
    if target is not None and not 0 <= target < classes:
        raise UserError(
            f"--target_class={target}: the model has {classes} classes; give 0 to {classes - 1}"
        )
    size, crop = source.preprocessing(image_size, crop_pct)
    images, ok, failed = predict.read_images(files, size, crop)
    out = _output_dir(out)
    names, written = source.class_names(), {}
    for image, f in zip(images, ok):
        numbers = analyse(model, image, target)
        stem = paths.path(f).stem
        files = {k: out / f"{stem}_{k}.png" for k in ("k", "temperature", "spectrum", "gradcam")}
        plot_k(numbers, files["k"])
        plot_temperature(image, numbers, files["temperature"])
        plot_spectrum(numbers, files["spectrum"])
        plot_grad_cam(image, numbers, names[numbers["target"]], files["gradcam"])
        files["numbers"] = out / f"{stem}.json"
        label = names[numbers["target"]]
        files["numbers"].write_text(json.dumps({"image": f, "class": label, **jsonable(numbers)}))
        written[f] = {k: str(v) for k, v in files.items()}
    return written, failed
