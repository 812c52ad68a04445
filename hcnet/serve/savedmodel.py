"""A TensorFlow SavedModel for serving: uint8 images of any size in, class probabilities out.

TensorFlow runs only here (an export tool), never in the model or the training step. The model
inside is the same jax.export program as the stablehlo export, called through XlaCallModule
(jax2tf); the preprocessing is `hcnet.data.transforms.eval_image` rewritten in TensorFlow ops, pixel
for pixel.

Two things stand between jax 0.10.2's export and TensorFlow 2.21's XlaCallModule, and
`for_tensorflow` removes both: jax writes StableHLO for consumers at most four weeks older than
itself (1.15.0) while TensorFlow reads 1.13.7, and erf (the exact GELU) travels as a `chlo.erf`
composite whose decomposition TensorFlow's shape refinement does not enter, so a symbolic batch size
stays dynamic there and is refused. The composites are replaced by their decompositions, inlined,
and the module is written for the older of the two StableHLO versions.
"""

import dataclasses
import math

import jax
from jax.extend import mlir as jax_mlir
from jax.extend.mlir import ir, passmanager
from jax.extend.mlir.dialects import func, stablehlo
from jax.interpreters import mlir as jax_interpreters_mlir

# Pillow 13's resampling (src/libImaging/Resample.c): separable, each pass rounded and clipped to
# uint8, weights in fixed point with this many fraction bits; the vertical pass goes first when the
# height shrinks by more than twice as many pixels as the width
PRECISION_BITS = 32 - 8 - 2
BICUBIC_SUPPORT, BICUBIC_A = 2.0, -0.5


def for_tensorflow(exported: jax.export.Exported, target: str) -> jax.export.Exported:
    """`exported` without composite ops, serialized for StableHLO `target` (the consumer's
    version)."""
    with jax_interpreters_mlir.make_ir_context():
        target = stablehlo.get_smaller_version(target, stablehlo.get_current_version())
        portable = jax_mlir.serialize_portable_artifact(
            ir.Module.parse(exported.mlir_module()), target
        )
        module = jax_mlir.deserialize_portable_artifact(portable)
        composites = []

        def collect(op):
            if op.name == "stablehlo.composite":
                composites.append(op)
            return ir.WalkResult.ADVANCE

        module.operation.walk(collect)
        for op in composites:
            with ir.InsertionPoint(op), op.location:
                call = func.CallOp(
                    [r.type for r in op.results],
                    ir.FlatSymbolRefAttr(op.attributes["decomposition"]),
                    list(op.operands),
                )
            for old, new in zip(op.results, call.results):
                old.replace_all_uses_with(new)
            op.erase()
        passmanager.PassManager.parse("builtin.module(inline,symbol-dce)").run(module.operation)
        if "stablehlo.composite" in str(module):
            raise RuntimeError(
                "a composite op survived inlining; TensorFlow cannot refine its shapes"
            )
        return dataclasses.replace(
            exported, mlir_module_serialized=jax_mlir.serialize_portable_artifact(module, target)
        )


def _bicubic(x):
    import tensorflow as tf

    x = tf.abs(x)
    near = ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _pil_weights(in_size, box0, box1, out_size: int):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc: fixed-point weights (out_size, in_size),
    float64."""
    import tensorflow as tf

    f64 = tf.float64
    # Pillow takes the box as C floats: rounded to float32, the width subtracted in float32
    box0, box1 = tf.cast(box0, tf.float32), tf.cast(box1, tf.float32)
    scale = tf.cast(box1 - box0, f64) / out_size
    box0 = tf.cast(box0, f64)
    filterscale = tf.maximum(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    center = box0 + (tf.range(out_size, dtype=f64) + 0.5) * scale  # (out,)
    # C's (int) cast truncates toward zero; both bounds are then clipped to the image
    xmin = tf.maximum(tf.cast(tf.cast(center - support + 0.5, tf.int32), f64), 0.0)[:, None]
    xmax = tf.minimum(
        tf.cast(tf.cast(center + support + 0.5, tf.int32), f64), tf.cast(in_size, f64)
    )[:, None]
    x = tf.range(tf.cast(in_size, f64), dtype=f64)[None, :]
    taps = (x >= xmin) & (x < xmax)
    w = tf.where(taps, _bicubic((x - center[:, None] + 0.5) / filterscale), 0.0)
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    w = tf.where(total != 0.0, w / tf.where(total != 0.0, total, 1.0), w)
    one = float(1 << PRECISION_BITS)
    # (int)(0.5 + w * 2^22), (int)(-0.5 + w * 2^22) for negative weights: rounding half away from
    # zero
    return tf.where(w < 0, tf.math.ceil(-0.5 + w * one), tf.math.floor(0.5 + w * one))


def _pass(images, weights, axis: int):
    """One resampling pass along `axis` (1 rows, 2 columns) of uint8 (B, H, W, C), rounded as Pillow
    does."""
    import tensorflow as tf

    x = tf.cast(images, tf.float64)
    # integer products summed exactly in float64 (|sum| < 2^53)
    acc = (
        tf.einsum("bhwc,ow->bhoc", x, weights)
        if axis == 2
        else tf.einsum("bhwc,oh->bowc", x, weights)
    )
    out = tf.math.floor((acc + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS))
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def eval_crop(images, size: int, crop_pct: float):
    """uint8 (B, H, W, 3) -> uint8 (B, size, size, 3): `eval_image`'s resize and centre crop, in
    TensorFlow."""
    import tensorflow as tf

    f64 = tf.float64
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    short = math.floor(size / crop_pct)
    # torchvision Resize: the longer side is int(short * long / short_side)
    portrait = width <= height
    new_w = tf.where(
        portrait, short, tf.cast(tf.cast(short * width, f64) / tf.cast(height, f64), tf.int32)
    )
    new_h = tf.where(
        portrait, tf.cast(tf.cast(short * height, f64) / tf.cast(width, f64), tf.int32), short
    )
    left = tf.cast(tf.round(tf.cast(new_w - size, f64) / 2.0), f64)  # Python's round: half to even
    top = tf.cast(tf.round(tf.cast(new_h - size, f64) / 2.0), f64)
    sx, sy = tf.cast(width, f64) / tf.cast(new_w, f64), tf.cast(height, f64) / tf.cast(new_h, f64)
    columns = _pil_weights(width, left * sx, (left + size) * sx, size)
    rows = _pil_weights(height, top * sy, (top + size) * sy, size)
    vertical_first = (height - size > 0) & (height - size > 2 * (width - size))
    return tf.cond(
        vertical_first,
        lambda: _pass(_pass(images, rows, axis=1), columns, axis=2),
        lambda: _pass(_pass(images, columns, axis=2), rows, axis=1),
    )


def write(exported: jax.export.Exported, out_dir: str, *, size: int, crop_pct: float) -> None:
    """Writes the SavedModel to the local `out_dir`: signatures serving_default, probabilities,
    preprocess."""
    import tensorflow as tf
    from jax.experimental import jax2tf
    from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo

    exported = for_tensorflow(exported, tf_stablehlo.get_current_version())
    probabilities = jax2tf.convert(
        exported.call, polymorphic_shapes=[f"(b, {size}, {size}, 3)"], with_gradient=False
    )
    module = tf.Module()
    cropped = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
    anysize = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    module.probabilities = tf.function(
        lambda images: {"probabilities": probabilities(images)},
        input_signature=[cropped],
        autograph=False,
    )
    module.preprocess = tf.function(
        lambda images: {"images": eval_crop(images, size, crop_pct)},
        input_signature=[anysize],
        autograph=False,
    )
    module.serve = tf.function(
        lambda images: {"probabilities": probabilities(eval_crop(images, size, crop_pct))},
        input_signature=[anysize],
        autograph=False,
    )
    tf.saved_model.save(
        module,
        out_dir,
        signatures={
            "serving_default": module.serve,
            "probabilities": module.probabilities,
            "preprocess": module.preprocess,
        },
    )
