"""A trained model out of the project: a parameters-only checkpoint that `hcnet.load` reads, or a
model for serving that needs nothing of this project (hcnet.tools.export).

    checkpoint  DIR/model.json DIR/params/ (+ config.json): hcnet.load(DIR)
    stablehlo   DIR/model.stablehlo (jax.export, serialized; the batch size symbolic) and
    DIR/serving.json:
                uint8 images (batch, S, S, 3), resized and centre-cropped as evaluation does, to
                class probabilities (batch, classes); load with
                jax.export.deserialize(bytes).call(images)
    torch       FILE.pth or FILE.safetensors: the reference's own state_dict (its names, OIHW
                convolutions, (out, in) linear weights, mean8's mean_num buffers for one input
                size), which the reference's HcNet loads with load_state_dict(strict=True)
    savedmodel  DIR/ a TensorFlow SavedModel (+ DIR/serving.json): signature serving_default takes
    uint8
                images (batch, H, W, 3) of any size, resizes and crops them exactly as evaluation
                does (hcnet.serve.savedmodel.eval_crop) and returns {"probabilities": (batch,
                classes)}; signatures preprocess and probabilities are its two halves

The weights are constants inside the exported program; the SavedModel runs the same program through
TensorFlow's XlaCallModule (hcnet.serve.savedmodel says what it takes to make TensorFlow 2.21 read
it).
"""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np

from hcnet import checkpoint, convert, nets, paths, trained
from hcnet.errors import UserError
from hcnet.serve import predict

FORMATS = ("checkpoint", "stablehlo", "savedmodel", "torch")
TORCH_SUFFIXES = (".pth", ".pt", ".safetensors")
STABLEHLO_FILE, SERVING_FILE = "model.stablehlo", "serving.json"


def export(run_dir, out, *, ema: bool = False, step: int | None = None) -> paths.Path:
    """Copies the chosen weights and the model spec of `run_dir` to the new directory `out` (either
    gs://)."""
    run_dir = paths.path(run_dir)
    paths.check(run_dir)
    if not (run_dir / checkpoint.CHECKPOINTS).is_dir():
        raise FileNotFoundError(
            f"{run_dir}: not a training workdir (expected model.json and checkpoints/)"
        )
    source = trained.open(run_dir, step=step)
    out = checkpoint.save(out, source.model(ema=ema), source.spec)
    if source.config is not None:  # image size, crop and dataset for predict and visualize
        paths.copy_file(source.path / trained.CONFIG_FILE, out / trained.CONFIG_FILE)
    return out


def _torch_file(out) -> paths.Path:
    """`out` with a suffix: as given, else .pth where torch is installed and .safetensors
    elsewhere."""
    out = paths.path(out)
    if out.suffix.lower() in TORCH_SUFFIXES:
        return out
    if out.suffix:
        raise UserError(
            f"--out={out}: a state_dict file ends in .pth, .pt or .safetensors (or give no suffix)"
        )
    try:
        import torch  # noqa: F401
    except ImportError:
        return out.with_name(out.name + ".safetensors")
    return out.with_name(out.name + ".pth")


def state_dict_bytes(state: dict, suffix: str) -> bytes:
    """The file's bytes: torch.save of tensors for .pth / .pt, safetensors otherwise."""
    if suffix == ".safetensors":
        from safetensors.numpy import save

        return save(state)
    try:
        import torch
    except ImportError:
        raise UserError(
            f"writing {suffix} needs torch (pip install torch==2.13.0); or write FILE.safetensors, "
            "which the reference reads with safetensors.torch.load_file"
        ) from None
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, buffer)
    return buffer.getvalue()


def export_torch(
    path, out, *, ema: bool = False, step: int | None = None, image_size: int | None = None
) -> tuple[paths.Path, str]:
    """A checkpoint or workdir as the reference's state_dict in FILE.pth or FILE.safetensors; ->
    (the file, one line saying what it holds and how to load it). A segmentation network gives its
    backbone; mean8's buffers are sized for `image_size` (default: the run's training size)."""
    source = trained.open(path, step=step)
    weights = jax.tree.map(np.asarray, nets.weights_of(source.model(ema=ema)))
    spec = {"heat_operator": "mean8", "num_classes": 1000, **source.spec}  # HcNet's defaults
    spec.pop("decoder", None)
    convert.check_expressible(spec)
    size = image_size or source.preprocessing()[0]
    if "decoder" in source.spec:
        left = len(jax.tree.leaves(weights)) - len(jax.tree.leaves(weights["backbone"]))
        weights = weights["backbone"]
        heads = (
            "Mask R-CNN's FPN and heads"
            if source.is_detection
            else ("UperNet's decode and auxiliary heads")
        )
        how = (
            f"the HcNet backbone only: left out {heads} ({left} "
            "arrays), and the backbone has no classification head; load it with strict=False, or "
            "as mmsegmentation and mmdetection load a backbone's weights"
        )
    elif not spec["num_classes"]:
        raise UserError(
            "model.num_classes=0: the reference's HcNet always has a classification head; export "
            "a network with one"
        )
    else:
        how = "load_state_dict(strict=True) into the reference's HcNet"
    state = convert.to_state_dict(weights, spec, size)
    out = _torch_file(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(state_dict_bytes(state, out.suffix.lower()))
    dims = ", ".join(str(d) for d in spec["dims"])
    depths = ", ".join(str(d) for d in spec["depths"])
    built = f"depths=({depths}), dims=({dims}), heat_operator={spec['heat_operator']!r}"
    sized = f", img_size={size}" if spec["heat_operator"] == "mean8" else ""
    return out, f"{len(state)} tensors for HcNet({built}{sized}); {how}"


def probabilities_fn(predict_fn, weights):
    """uint8 images (B, S, S, 3), already resized and cropped -> float32 class probabilities (B,
    classes), the weights held as constants."""
    probabilities = predict.softmax_fn(predict_fn)

    def serve(images):
        return probabilities(weights, images)

    return serve


def _serving(path, ema, step, image_size, crop_pct, platforms):
    """(the jax.export program of probabilities_fn, serving.json's fields) for a checkpoint or
    workdir."""
    source = trained.open(path, step=step)
    if "decoder" in source.spec:
        raise UserError(
            f"{path} is a {'detection' if source.is_detection else 'segmentation'} network: it "
            "exports as --format=checkpoint (hcnet.load and hcnet.tools.predict read it) or "
            "--format=torch (its backbone); stablehlo and savedmodel serve classifiers"
        )
    size, crop = source.preprocessing(image_size, crop_pct)
    (batch,) = jax.export.symbolic_shape("batch")
    serve = jax.jit(probabilities_fn(*source.predictor(ema=ema)))
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    exported = jax.export.export(serve, platforms=tuple(platforms))(images)
    info = {
        "platforms": list(platforms),
        "image_size": size,
        "crop_pct": crop,
        "classes": source.class_names(),
        "output": "float32 class probabilities (batch, classes)",
    }
    return exported, info


def _write_info(out, info: dict) -> None:
    (out / SERVING_FILE).write_text(json.dumps(info, indent=1) + "\n")


def export_stablehlo(
    path,
    out,
    *,
    ema: bool = False,
    step: int | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
    platforms=("cpu", "cuda", "tpu"),
) -> paths.Path:
    """The model of a checkpoint or workdir as serialized StableHLO for `platforms`, the batch size
    symbolic."""
    exported, info = _serving(path, ema, step, image_size, crop_pct, platforms)
    out = paths.new_dir(out)
    (out / STABLEHLO_FILE).write_bytes(exported.serialize())
    _write_info(
        out,
        {
            "format": "stablehlo",
            **info,
            "input": "uint8 (batch, S, S, 3) RGB, shorter side resized to floor(S / crop_pct) "
            "(bicubic) "
            "and centre-cropped to S x S (hcnet.data.transforms.eval_image)",
        },
    )
    return out


def export_savedmodel(
    path,
    out,
    *,
    ema: bool = False,
    step: int | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
    platforms=("cpu", "cuda", "tpu"),
) -> paths.Path:
    """The model of a checkpoint or workdir as a TensorFlow SavedModel, eval preprocessing
    included."""
    from hcnet.serve import savedmodel  # TensorFlow, only here

    exported, info = _serving(path, ema, step, image_size, crop_pct, platforms)
    out = paths.new_dir(out)
    with paths.staged(out) as local:
        savedmodel.write(exported, str(local), size=info["image_size"], crop_pct=info["crop_pct"])
        _write_info(
            local,
            {
                "format": "savedmodel",
                **info,
                "signatures": {
                    "serving_default": "images: uint8 (batch, H, W, 3) RGB of any size -> "
                    "probabilities; "
                    "the shorter side resized to floor(S / crop_pct) and the centre S x S kept, as "
                    "hcnet.data.transforms.eval_image does, pixel for pixel",
                    "preprocess": "images: uint8 (batch, H, W, 3) -> images: uint8 (batch, S, S, "
                    "3)",
                    "probabilities": "images: uint8 (batch, S, S, 3), already cropped -> "
                    "probabilities",
                },
            },
        )
    return out
