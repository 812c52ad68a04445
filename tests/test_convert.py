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
