"""The reference's (PyTorch) HcNet state_dicts, both ways: imported into an Orbax checkpoint that
`hcnet.load` reads, and our parameters written back under the reference's names and layouts.

  python -m hcnet.tools.convert --from_torch=PATH --variant=T --out=DIR [--heat_operator=...] \\
      [--depths=3,8,18,3]
  python -m hcnet.tools.export --format=torch --checkpoint=RUN_OR_EXPORT --out=FILE.pth

PATH is a `.pth`/`.pt` (needs torch), `.safetensors` or `.npz` file. The operator form is read off
the key names unless given. Every key must be used and every shape must match; the model comes back
in eval mode. Going back (`to_state_dict`), mean8's `mean_num` buffers are added for the input size
the reference model is built at, so that it loads the result with strict=True.
"""

import io

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from hcnet import paths
from hcnet.errors import ConversionError, described
from hcnet.model import model_spec
from hcnet.nets import ModelDef
from hcnet.stencils import neighbour_count


def read_state_dict(path) -> dict[str, np.ndarray]:
    """Tensors by name from .pth/.pt, .safetensors or .npz (local or gs://); unwraps {'model': ...},
    strips 'module.'."""
    path = paths.path(path)
    paths.check(path)
    if not path.is_file():
        raise ConversionError(
            f"{path}: no such file (expected a .pth, .pt, .safetensors or .npz state_dict)"
        )
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors", ".pth", ".pt", ".bin"):
        raise ConversionError(
            f"{path}: unknown suffix {suffix!r} (expected .pth, .pt, .safetensors or .npz)"
        )
    data = path.read_bytes()
    if not data:
        raise ConversionError(f"{path}: an empty file (expected a {suffix} state_dict)")
    state = _parse(path, suffix, data)
    if not isinstance(state, dict):
        raise ConversionError(
            f"{path}: holds a {type(state).__name__}, not a state_dict (a dict of tensors by "
            "name); save one with torch.save(model.state_dict(), f)"
        )
    for wrapper in ("model", "state_dict", "model_ema"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    return {
        k.removeprefix("module."): np.asarray(v.float().numpy() if hasattr(v, "numpy") else v)
        for k, v in state.items()
    }


def _parse(path, suffix: str, data: bytes):
    """The object a weight file holds; one line for a file that is not what its suffix says."""
    try:
        if suffix == ".npz":
            with np.load(io.BytesIO(data)) as f:
                return {k: f[k] for k in f.files}
        if suffix == ".safetensors":
            from safetensors.numpy import load

            return load(data)
    except Exception as e:  # a damaged or foreign file, as the reader says
        raise _unreadable(path, suffix, e) from None
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path}: reading {suffix} needs torch (pip install torch), or give "
            "the weights as .safetensors or .npz"
        ) from None
    import pickle

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e):  # not a class it refused: random bytes, a damaged file
            raise ConversionError(  # (torch's own message advises weights_only=False)
                f"{path}: not a readable {suffix} file (it does not unpickle as torch.save "
                "writes); expected what torch.save(model.state_dict(), f) writes"
            ) from None
        raise ConversionError(  # objects beyond tensors: never unpickled from a given file
            f"{path}: not a plain state_dict (it pickles objects other than tensors, which are "
            "not loaded from a file one did not make); save one with "
            "torch.save(model.state_dict(), f), or give .safetensors"
        ) from None
    except Exception as e:  # not a torch file at all: truncated, random, another format
        raise _unreadable(path, suffix, e, "; expected what torch.save writes") from None


def _unreadable(path, suffix: str, e: Exception, hint: str = "") -> ConversionError:
    return ConversionError(f"{path}: not a readable {suffix} file ({described(e)}){hint}")


def infer_heat_operator(keys) -> str:
    """mean8 (fc_0 + mlp.dwconv), learned3 (fc_0 + Anisotropic_conv), learned5 (DeltaT_DeltaD)."""
    keys = list(keys)

    def has(part):
        return any(part in k for k in keys)

    if has(".DeltaT_DeltaD."):
        return "learned5"
    if has(".Anisotropic_conv."):
        return "learned3"
    if has(".fc_0.") and has(".mlp.dwconv."):
        return "mean8"
    raise ConversionError(
        "cannot tell the operator form from the keys (expected fc_0 with mlp.dwconv, "
        "Anisotropic_conv, or DeltaT_DeltaD); pass --heat-operator"
    )


def reference_name(path: tuple, heat_operator: str) -> str:
    """The reference's state_dict key for one of our parameter paths."""
    rename = {
        "stem": "patch_embed",
        "stages": "layers",
        "ra": "mlp",
        "kernel": "weight",
        "scale": "weight",
        "stencil": "Anisotropic_conv.weight",
        "gate": "DeltaT_DeltaD" if heat_operator == "learned5" else "fc_0",
        "filter": ("mlp.dwconv" if heat_operator == "mean8" else "mlp.Filters") + ".weight",
    }
    parts = [str(p) for p in path]
    if len(parts) > 4 and parts[2] == "blocks" and parts[4] == "norm":
        parts[4] = "norm2"
    if "downsample" in parts and parts[-2] == "conv":
        parts[-2] = "reduction"
    name = ".".join(rename.get(p, p) for p in parts)
    return name.replace("mlp.mlp.", "mlp.").replace("heat.", "")


def to_ours(value: np.ndarray, shape: tuple) -> np.ndarray:
    """OIHW -> HWIO (dense and depthwise), 1x1 conv or linear (out, in) -> (in, out)."""
    if value.ndim == 4 and len(shape) == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 4 and len(shape) == 2 and value.shape[2:] == (1, 1):
        return value[:, :, 0, 0].T
    if value.ndim == 2 and len(shape) == 2:
        return value.T
    return value


def to_reference(value: np.ndarray, key: str) -> np.ndarray:
    """The inverse of to_ours: HWIO -> OIHW, (in, out) -> the head's (out, in) or a 1x1 conv's
    (out, in, 1, 1)."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T if key.startswith("head.") else value.T[:, :, None, None]
    return value


def reference_shape(shape: tuple, key: str) -> tuple:
    """Our parameter shape in the reference's layout, for error messages."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0]) if key.startswith("head.") else (shape[1], shape[0], 1, 1)
    return tuple(shape)


def check_buffers(state: dict, keys: set):
    """mean_num buffers are not parameters: check them against the computed count, then drop
    them."""
    for key in sorted(k for k in keys if k.endswith(".mean_num")):
        buf = state[key]
        if buf.ndim != 4 or not np.array_equal(buf[0, 0], neighbour_count(*buf.shape[2:])[..., 0]):
            raise ConversionError(
                f"{key}: not the border-aware neighbour count for a "
                f"{buf.shape[2:]} map (expected 8 inside, 5 on edges, 3 at corners)"
            )
        keys.discard(key)


def torch_params(state: dict, shapes: dict, heat_operator: str) -> dict:
    """Our parameters {path: array} from reference tensors, for the {path: ShapeDtypeStruct} wanted.

    Raises one ConversionError naming every missing, unused and misshapen key.
    """
    unused = set(state)
    check_buffers(state, unused)
    missing, mismatched, values = [], [], {}
    for path, want in shapes.items():
        key = reference_name(path, heat_operator)
        if key not in state:
            missing.append(key)
            continue
        unused.discard(key)
        value = to_ours(state[key], want.shape)
        if value.shape != want.shape:
            mismatched.append(
                f"{key} {tuple(state[key].shape)} (expected {reference_shape(want.shape, key)})"
            )
            continue
        values[path] = value.astype(want.dtype)
    problems = [
        f"{label}: {', '.join(sorted(items)[:8])}{' ...' if len(items) > 8 else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unused keys", unused),
            ("wrong shapes", mismatched),
        )
        if items
    ]
    if problems:
        raise ConversionError(
            "state_dict does not fit the model; "
            + "; ".join(problems)
            + " (check --variant, --depths and --heat_operator)"
        )
    return values


def convert(path, *, variant: str | None = "T", heat_operator: str | None = None, **overrides):
    """(model, spec) with the reference weights of `path`. Only the input-dependent k exists
    there."""
    state = read_state_dict(path)
    heat_operator = heat_operator or infer_heat_operator(state)
    head = state.get("head.weight")
    overrides.setdefault("num_classes", head.shape[0] if head is not None else 1000)
    spec = model_spec(variant, heat_operator=heat_operator, k_mode="input", **overrides)
    model_def, wanted = ModelDef.from_spec(spec)
    params = unflatten_dict(torch_params(state, flatten_dict(wanted), heat_operator))
    return model_def.eval_model(params), spec


# What the reference's HcNet always is; a spec with another value has no reference equivalent.
REFERENCE_ONLY = {"k_mode": "input", "ra_filter": True, "mlp_ratio": 4.0}


def check_expressible(spec: dict) -> None:
    """One line naming the first option of `spec` the reference's HcNet has no equivalent for."""
    for option, value in REFERENCE_ONLY.items():
        if spec.get(option, value) != value:
            raise ConversionError(
                f"model.{option}={spec[option]!r}: the reference's HcNet has no such option (it is "
                f"always {option}={value!r}), so no state_dict of it can hold this network"
            )


def mean_num_buffers(depths, image_size: int) -> dict[str, np.ndarray]:
    """mean8's buffers as the reference registers them for img_size: each stage's neighbour count
    at (img_size // 4) // 2**stage, shape (1, 1, H, W)."""
    out, side = {}, image_size // 4
    for i, depth in enumerate(depths):
        count = neighbour_count(side, side)[None, None, ..., 0]
        out.update({f"layers.{i}.blocks.{j}.mean_num": count.copy() for j in range(depth)})
        side //= 2
    return out


def to_state_dict(params: dict, spec: dict, image_size: int = 224) -> dict[str, np.ndarray]:
    """The reference's state_dict (float32 numpy arrays by key) of HcNet parameters `params` (our
    nested tree) with spec `spec`; mean8 gets its `mean_num` buffers for `image_size` inputs."""
    check_expressible(spec)
    heat_operator = spec.get("heat_operator", "mean8")
    state = {}
    for path, value in flatten_dict(params).items():
        key = reference_name(path, heat_operator)
        state[key] = np.ascontiguousarray(to_reference(np.asarray(value, np.float32), key))
    if heat_operator == "mean8":
        state.update(mean_num_buffers(spec["depths"], image_size))
    return state
