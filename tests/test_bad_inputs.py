"""Ordinary mistakes end a command in one line, `error: ...`, status 1, no traceback: a workdir
that is a file, a config field misspelt, a config file that is not there, a value of the wrong type,
a damaged run file, weight files that are empty, random, a list or a pickle of objects; a metric
without data is '-'; and a CPU host with the accelerator requirements installed stays quiet."""

import collections
import json
import subprocess
import sys

import numpy as np
import pytest
from test_train import ROOT, env_with

from hcnet import hostenv, tools
from hcnet.tools import convert as convert_tool

PLUGIN_NOISE = ("Traceback", "cuInit", "TPU_WORKER_HOSTNAMES", "plugin configuration error")


class Net:  # a pickled object of a class: what a file of a whole model holds
    pass


def one_line_error(proc) -> str:
    """The command's error line, after checking it is its only complaint."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    return last


@pytest.mark.heavy
@pytest.mark.parametrize(
    "flags,said",
    [
        (["--workdir=FILE"], "a file, not a folder; give a folder"),
        (["--config.optim.lrr=1"], "--config.optim.lrr: no such field 'lrr'; Did you mean \"lr\""),
        (["--config.optim.lr=abc"], "could not convert string to float: 'abc'"),
        (["--config=configs/nope.py"], "--config: configs/nope.py; [Errno 2] No such file"),
    ],
)
def test_train_py_says_what_was_wrong_in_one_line(flags, said, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    args = [f.replace("FILE", str(afile)) for f in flags]
    config = [] if any(a.startswith("--config=") for a in args) else ["--config=configs/smoke.py"]
    workdir = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path}/r"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *config, *workdir, *args],
        cwd=ROOT,
        env=env_with(1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert said in one_line_error(proc)


@pytest.mark.heavy
def test_eval_py_on_a_damaged_config_json_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model": {"variant": "mu"')  # cut short
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"--workdir={tmp_path}"],
        cwd=ROOT,
        env=env_with(1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = one_line_error(proc)
    assert f"{tmp_path}/config.json: not a config.json this code can read" in line


def convert_error(path, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        tools.invoke(convert_tool.main, [f"--from_torch={path}", "--variant=mu", "--out=/x"])
    assert exit_.value.code.startswith("error: ")
    return exit_.value.code


def test_weight_files_that_are_not_state_dicts_are_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    files = {
        "empty.pth": b"",
        "random.pth": np.random.default_rng(0).bytes(1000),
        "random.safetensors": np.random.default_rng(1).bytes(100),
        "random.npz": np.random.default_rng(2).bytes(100),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    torch.save({"net": Net()}, tmp_path / "objects.pth")  # what weights_only=True refuses
    torch.save(collections.OrderedDict(w=torch.zeros(2)), tmp_path / "fine.pth")

    said = {name: convert_error(tmp_path / name, capsys) for name in [*files, "list.pth"]}
    assert "an empty file" in said["empty.pth"]
    assert (
        "not a readable .pth file (it does not unpickle as torch.save writes)" in said["random.pth"]
    )
    assert "not a readable .safetensors file (SafetensorError" in said["random.safetensors"]
    assert "not a readable .npz file" in said["random.npz"]
    assert "holds a list, not a state_dict" in said["list.pth"]
    objects = convert_error(tmp_path / "objects.pth", capsys)
    assert "not a plain state_dict" in objects and "torch.save(model.state_dict(), f)" in objects
    assert all("weights_only=False" not in s for s in [*said.values(), objects])
    # a plain state_dict passes the reading, and stops only at what the network lacks
    assert "not a" not in convert_error(tmp_path / "fine.pth", capsys)


def test_a_damaged_model_json_is_one_line(tmp_path):
    from hcnet import checkpoint
    from hcnet.errors import UserError

    (tmp_path / "model.json").write_text("[1, 2")
    with pytest.raises(UserError, match=r"model.json: damaged \(Expecting"):
        checkpoint.read_spec(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps([1, 2]))
    with pytest.raises(UserError, match=r"model.json: damaged \(list\)"):
        checkpoint.read_spec(tmp_path)


def test_a_cpu_host_runs_commands_on_the_cpu_and_an_accelerator_host_is_left_alone():
    env = {}
    hostenv.cpu_only(env, accelerator=False)
    assert env == {"JAX_PLATFORMS": "cpu"}
    env = {}
    hostenv.cpu_only(env, accelerator=True)
    assert env == {}
    env = {"JAX_PLATFORMS": "tpu"}
    hostenv.cpu_only(env, accelerator=False)
    assert env == {"JAX_PLATFORMS": "tpu"}


@pytest.mark.heavy
def test_a_cpu_host_with_the_accelerator_requirements_prints_no_plugin_errors():
    """(Where requirements-gpu.txt and requirements-tpu.txt are installed, as .ci/run does; JAX
    alone prints the CUDA plugin's traceback and libtpu's errors there.)"""
    quiet = ("JAX_PLATFORMS", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "ALLOW_MULTIPLE_LIBTPU_LOAD")
    env = {k: v for k, v in env_with(1).items() if k not in quiet}  # as a user's shell has it
    if hostenv.accelerator_attached():
        pytest.skip("an accelerator is attached here")
    proc = subprocess.run(
        [sys.executable, "-m", "hcnet.tools.count", "--variant=mu", "--image_size=32"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [n for n in PLUGIN_NOISE if n in proc.stderr], proc.stderr[-2000:]
    assert "params" in proc.stdout
