"""A trained model out of the project: a parameters-only checkpoint that `hcnet.load` reads, or a
model for serving that needs nothing of this project (hcnet.tools.export).

    checkpoint  DIR/model.json DIR/params/ (+ config.json): hcnet.load(DIR)
    stablehlo   DIR/model.stablehlo (jax.export, serialized; the batch size symbolic) and
    DIR/serving.json:
                uint8 images (batch, S, S, 3), resized and centre-cropped as evaluation does, to
                class probabilities (batch, classes); load with
                jax.export.deserialize(bytes).call(images)
    savedmodel  DIR/ a TensorFlow SavedModel (+ DIR/serving.json): signature serving_default takes
    uint8
                images (batch, H, W, 3) of any size, resizes and crops them exactly as evaluation
                does (hcnet.serve.savedmodel.eval_crop) and returns {"probabilities": (batch,
                classes)}; signatures preprocess and probabilities are its two halves

The weights are constants inside the exported program; the SavedModel runs the same program through
TensorFlow's XlaCallModule (hcnet.serve.savedmodel says what it takes to make TensorFlow 2.21 read
it).
"""

import json

import jax
import jax.numpy as jnp

from hcnet import checkpoint, paths, trained
from hcnet.errors import UserError
from hcnet.serve import predict

FORMATS = ("checkpoint", "stablehlo", "savedmodel")
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
    if source.is_segmentation:
        raise UserError(
            f"{path} is a segmentation network: it exports as --format=checkpoint (hcnet.load and "
            "hcnet.tools.predict read it); stablehlo and savedmodel serve classifiers"
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
