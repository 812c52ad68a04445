"""Reference checkpoints: logit parity with the PyTorch statement, and errors that name the keys."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hcnet
from hcnet import paths, tools
from hcnet.convert import convert, infer_heat_operator, read_state_dict
from hcnet.errors import ConversionError
from hcnet.tools import convert as convert_tool

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FORMS = ("mean8", "learned3", "learned5")
SIZES = ((224, 224), (160, 96))  # as written by `python -m hcnet.torch_model --write-fixtures`


def fixture_input(height, width, batch=2):
    """The same draws as hcnet.torch_model.fixture_input, NHWC (numpy's frozen legacy generator)."""
    x = np.random.RandomState(height * 1000 + width).standard_normal((batch, 3, height, width))
    return x.astype(np.float32).transpose(0, 2, 3, 1)


def logits(model, x):
    return np.asarray(nnx.jit(lambda m, x: m(x))(model, x))


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def state(form):
    return read_state_dict(FIXTURES / f"parity_{form}.npz")


@pytest.mark.parametrize("form", FORMS)
def test_converted_model_matches_the_pytorch_logits(form):
    model, spec = convert(FIXTURES / f"parity_{form}.npz", variant="mu")
    assert spec["heat_operator"] == form and spec["num_classes"] == 10
    expected = np.load(FIXTURES / f"parity_{form}_logits.npz")
    for h, w in SIZES:
        assert rel_err(logits(model, fixture_input(h, w)), expected[f"{h}x{w}"]) < 1e-5


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_command_line_writes_a_checkpoint_that_load_reads(where, tmp_path, capsys, request):
    root = paths.path(tmp_path if where == "local" else request.getfixturevalue("bucket"))
    source, out = root / "parity_learned5.npz", root / "ckpt"  # both in the bucket for gcs
    paths.copy_file(FIXTURES / "parity_learned5.npz", source)
    tools.invoke(convert_tool.main, [f"--from_torch={source}", "--variant=mu", f"--out={out}"])
    assert "learned5" in capsys.readouterr().out
    model = hcnet.load(out)
    expected = np.load(FIXTURES / "parity_learned5_logits.npz")["160x96"]
    assert rel_err(logits(model, fixture_input(160, 96)), expected) < 1e-5
    with pytest.raises(SystemExit, match="^error: .*is not empty"):
        tools.invoke(convert_tool.main, [f"--from_torch={source}", "--variant=mu", f"--out={out}"])


def test_load_returns_the_model_in_eval_mode(tmp_path):
    spec = hcnet.model_spec("mu", drop_path=0.5, dropout=0.2, num_classes=5)
    model = hcnet.create_model(rngs=nnx.Rngs(0), **spec)
    hcnet.save(tmp_path / "ckpt", model, spec)
    loaded = hcnet.load(tmp_path / "ckpt")
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    np.testing.assert_array_equal(logits(loaded, x), logits(loaded, x))
    np.testing.assert_allclose(
        logits(loaded, x), logits(nnx.view(model, deterministic=True), x), rtol=1e-6
    )
    assert hcnet.load(tmp_path / "ckpt", dtype="bfloat16").stem.conv1.dtype == jnp.bfloat16


def test_load_names_what_a_checkpoint_must_hold(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an hcnet checkpoint .*model.json"):
        hcnet.load(tmp_path)


@pytest.mark.parametrize("form", FORMS)
def test_operator_form_is_read_off_the_key_names(form):
    assert infer_heat_operator(state(form)) == form


def test_safetensors_and_wrapped_pth_read_the_same_tensors(tmp_path):
    from safetensors.numpy import save_file

    tensors = state("learned3")
    save_file(tensors, str(tmp_path / "w.safetensors"))
    again = read_state_dict(tmp_path / "w.safetensors")
    assert again.keys() == tensors.keys() and all(
        np.array_equal(again[k], tensors[k]) for k in tensors
    )
    torch = pytest.importorskip("torch")
    torch.save(
        {"model": {f"module.{k}": torch.from_numpy(v) for k, v in tensors.items()}, "epoch": 3},
        tmp_path / "w.pth",
    )
    again = read_state_dict(tmp_path / "w.pth")
    assert again.keys() == tensors.keys() and all(
        np.array_equal(again[k], tensors[k]) for k in tensors
    )


def write(tmp_path, tensors):
    np.savez(tmp_path / "bad.npz", **tensors)
    return tmp_path / "bad.npz"


def test_extra_missing_and_misshapen_keys_are_named_in_one_error(tmp_path):
    tensors = state("mean8")
    tensors["layers.0.blocks.0.extra.weight"] = np.zeros(3, np.float32)
    del tensors["head.bias"]
    tensors["layers.1.blocks.0.mlp.fc1.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ConversionError) as err:
        convert(write(tmp_path, tensors), variant="mu")
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing keys: head.bias" in msg
    assert "unused keys: layers.0.blocks.0.extra.weight" in msg
    assert "wrong shapes: layers.1.blocks.0.mlp.fc1.bias (7,) (expected (128,))" in msg


def test_weights_of_another_model_do_not_fit(tmp_path):
    with pytest.raises(ConversionError) as err:
        convert(FIXTURES / "parity_mean8.npz", variant="mu", dims=(16, 32, 48, 96))
    assert "wrong shapes: head.weight (10, 64) (expected (10, 96))" in str(err.value)
    assert "layers.3.blocks.0.mlp.fc1.weight (256, 64, 1, 1) (expected (384, 96, 1, 1))" in str(
        err.value
    )
    assert str(err.value).endswith("(check --variant, --depths and --heat_operator)")


def test_a_wrong_mean_num_buffer_is_refused(tmp_path):
    tensors = state("mean8")
    key = next(k for k in tensors if k.endswith("mean_num"))
    tensors[key] = np.full_like(tensors[key], 8.0)
    with pytest.raises(ConversionError, match=f"{key}: not the border-aware neighbour count"):
        convert(write(tmp_path, tensors), variant="mu")


def test_unreadable_paths_say_what_is_accepted(tmp_path):
    with pytest.raises(ConversionError, match="no such file"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ConversionError, match=r"unknown suffix '.ckpt' \(expected .pth"):
        read_state_dict(tmp_path / "w.ckpt")


def test_model_and_conversion_import_without_tensorflow():
    code = (
        "import sys, hcnet, hcnet.measure.count, hcnet.convert, hcnet.checkpoint; "
        "bad = [m for m in ('tensorflow', 'torch') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- back to PyTorch: hcnet.tools.export --format=torch ------------------------------------------


def export_torch(source, out, *extra):
    from hcnet.tools import export as export_tool

    tools.invoke(
        export_tool.main, ["--format=torch", f"--checkpoint={source}", f"--out={out}", *extra]
    )


def converted(form, tmp_path):
    """The fixture of `form` through `hcnet.tools.convert`: an export of the reference's weights."""
    out = tmp_path / f"converted_{form}"
    source = FIXTURES / f"parity_{form}.npz"
    tools.invoke(convert_tool.main, [f"--from_torch={source}", "--variant=mu", f"--out={out}"])
    return out


@pytest.mark.parametrize("form", FORMS)
def test_convert_then_export_gives_back_the_reference_state_dict(form, tmp_path, capsys):
    """Same keys, same values bit for bit, same dtypes, mean8's buffers included (the fixtures were
    written from a model built at 224)."""
    export_torch(converted(form, tmp_path), tmp_path / "back.safetensors", "--image_size=224")
    assert "load_state_dict(strict=True)" in capsys.readouterr().out
    back, original = read_state_dict(tmp_path / "back.safetensors"), state(form)
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_export_then_convert_gives_back_the_same_arrays(smoke_run, tmp_path):
    """A trained run out to the reference's names and back in: bit-identical weights."""
    from hcnet import nets

    run_dir = smoke_run[0]
    export_torch(run_dir, tmp_path / "run.safetensors")
    model, _ = convert(tmp_path / "run.safetensors", variant="mu")
    again, trained = nets.weights_of(model), nets.weights_of(hcnet.load(run_dir))
    assert jax.tree.structure(again) == jax.tree.structure(trained)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(trained)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("form", FORMS)
def test_the_reference_loads_the_export_strictly_and_gives_our_logits(
    form, smoke_run, tmp_path, capsys
):
    """mean8 from a trained run (the smoke run), learned3 and learned5 from converted weights:
    the PyTorch statement of the reference, built at the export's size, loads the .pth with
    strict=True and gives hcnet.load's logits at 224x224 and 160x96, to the float32 rounding the
    fixture parity allows (its side in float64)."""
    torch = pytest.importorskip("torch", reason="the reference's side needs torch")
    from reference.torch_model import TorchHcNet

    source = smoke_run[0] if form == "mean8" else converted(form, tmp_path)
    export_torch(source, tmp_path / "w", "--image_size=64")
    out = capsys.readouterr().out
    assert "w.pth" in out and "strict=True" in out
    ours = hcnet.load(source)
    spec = hcnet.trained.open(source).spec
    reference = TorchHcNet(
        spec["depths"],
        spec["dims"],
        num_classes=spec["num_classes"],
        heat_operator=form,
        img_size=64,
    )
    reference.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True), strict=True)
    reference = reference.double().eval()
    for h, w in SIZES:
        x = fixture_input(h, w)
        with torch.no_grad():
            expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)).double()).numpy()
        assert rel_err(logits(ours, x), expected) < 1e-5


@pytest.mark.parametrize(
    "option, value", [("k_mode", "learned"), ("ra_filter", False), ("num_classes", 0)]
)
def test_a_network_the_reference_cannot_hold_is_refused_in_one_line(option, value, tmp_path):
    from hcnet import checkpoint, nets

    spec = hcnet.model_spec("mu", **{option: value})
    directory = checkpoint.save(tmp_path / "ckpt", nets.build(spec, rngs=nnx.Rngs(0)), spec)
    with pytest.raises(SystemExit) as stop:
        export_torch(directory, tmp_path / "w.safetensors")
    assert str(stop.value).startswith(f"error: model.{option}={value!r}: the reference")
    assert "\n" not in str(stop.value) and not (tmp_path / "w.safetensors").exists()


def test_a_state_dict_file_is_named_pth_pt_or_safetensors(smoke_run, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --out=.*w\.bin: a state_dict file ends in"):
        export_torch(smoke_run[0], tmp_path / "w.bin")


def test_a_segmentation_checkpoint_exports_its_backbone_and_says_what_it_left(tmp_path, capsys):
    from hcnet import checkpoint, nets, upernet
    from hcnet.convert import reference_name

    spec = upernet.spec("mu", num_classes=4, channels=16, aux_channels=8)
    model = nets.build(spec, rngs=nnx.Rngs(0))
    directory = checkpoint.save(tmp_path / "seg", model, spec)
    export_torch(directory, tmp_path / "backbone.safetensors")
    line = capsys.readouterr().out
    assert "\n" not in line.strip() and "left out UperNet's decode and auxiliary heads" in line
    state_dict = read_state_dict(tmp_path / "backbone.safetensors")
    backbone = nets.weights_of(model)["backbone"]
    from flax.traverse_util import flatten_dict

    names = {reference_name(p, "mean8") for p in flatten_dict(backbone)}
    assert {k for k in state_dict if not k.endswith("mean_num")} == names
    assert not any(k.startswith("head.") for k in state_dict)
