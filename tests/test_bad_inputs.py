"""Ordinary mistakes end a command in one line, `error: ...`, status 1, no traceback, before
anything long runs: a table of each command's broken inputs (MATRIX: flags out of range, config
values of the wrong type or range, files empty, truncated, random, of another format, a
decompression bomb, folders empty or a file, damaged run files and checkpoints, buckets that do
not exist), every number a config field takes, weight files that are not state_dicts; a metric
without data is '-'; and a CPU host with the accelerator requirements installed stays quiet."""

import collections
import functools
import json
import math
import pathlib
import pkgutil
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import ROOT, env_with

from hcnet import checks, hostenv, tasks, tools
from hcnet import config as config_lib
from hcnet.errors import ConfigError
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


# ---------------------------------------------------------------- the matrix
# Each command's ordinary mistakes: (arguments, what its one line must say). The arguments name
# files that bad_inputs() writes: {tmp}/... (and {run}, a trained smoke run; {damaged}, the same run
# with its checkpoints' metadata garbled); {bucket} is an emulated bucket that exists,
# {nobucket} one that does not.
MATRIX = {
    "train.py": [
        (["{smoke}", "--workdir={tmp}/afile"], "a file, not a folder; give a folder"),
        (["{smoke}", "--workdir={tmp}/afile/run"], "cannot make this folder (Not a directory)"),
        (["{smoke}", "--workdir=/sys/hcnet-run"], "/sys/hcnet-run: cannot make this folder"),
        (["{smoke}", "{new}", "--config.optim.lrr=1"], "--config.optim.lrr: no such field 'lrr'"),
        (["{smoke}", "{new}", "--config.optim.lr=abc"], "could not convert string to float"),
        (["{smoke}", "{new}", "--config.optim.lr=-1"], "config.optim.lr=-1.0: must be >= 0"),
        (["{smoke}", "{new}", "--config.batch_size=-4"], "config.batch_size=-4: must be a posit"),
        (["{smoke}", "{new}", "--config.model.variant=XL"], "variant='XL': one of mu, T, S, B"),
        (
            [
                "{smoke}",
                "{new}",
                "--config.dataset.name=flowers",
                "--config.dataset.data_dir={tmp}",
            ],
            "dataset.name='flowers' is neither a TFDS dataset nor one prepared in data_dir=",
        ),
        (["{smoke}", "{new}", "--config.dataset.train_split=bogus"], "'bogus' is not a split"),
        (["{smoke}", "{new}", "--config.init_from={tmp}/empty"], "init_from={tmp}/empty: not a ch"),
        (["{smoke}", "{new}", "stray"], "unexpected arguments ['stray']: this command takes flags"),
        (["{smoke}"], "--workdir must have a value"),
        (["--config=configs/nope.py", "{new}"], "--config=configs/nope.py: OSError"),
        (["--config=configs/smoke.py:9", "{new}"], "TypeError: get_config() takes 0 positional"),
        (
            ["--config={tmp}/text.png", "{new}"],
            "--config={tmp}/text.png: NameError: name 'hello' is not",
        ),
        (["{smoke}", "--workdir={nobucket}/run"], "bucket {nobucket} does not exist"),
    ],
    "eval.py": [
        ([], "give one of --checkpoint=DIR or --workdir=DIR"),
        (["--workdir={tmp}/empty"], "{tmp}/empty/config.json: no config.json there; give --config"),
        (["--workdir={tmp}/bad_config"], "config.json: not a config.json this code can read"),
        (["--workdir={damaged}"], "params: a damaged checkpoint, or not this model's (JSONDecode"),
        (["--workdir={run}", "--step=5"], "no checkpoint at step 5 (steps there: [4, 8])"),
        (["--workdir={run}", "--weights=best"], "weights=best: each must be raw or ema"),
        (["--workdir={run}", "--split=bogus"], "'bogus' is not a split of synthetic: use one of"),
        (["--workdir={run}", "--image_size=-3"], "--image_size=-3: -3 is not integer >= 32"),
        (["--workdir={run}", "--crop_pct=0"], "--crop_pct=0.0: must be in (0, 1]"),
        (["--workdir={run}", "--batch_size=0"], "--batch_size=0: 0 is not a positive integer"),
        (["--workdir={run}", "--out=/sys/report.json"], "/sys/report.json: Permission denied"),
        (["--workdir={run}", "--top=3"], "Unknown command line flag 'top'"),
        (["--workdir={nobucket}/run"], "bucket {nobucket} does not exist"),
        (["--workdir={bucket}/run"], "{bucket}/run/config.json: no config.json there"),
    ],
    "hcnet.tools.predict": [
        (["--checkpoint={run}"], "give one or more image files after the flags"),
        (["--checkpoint={tmp}/empty", "{tmp}/ok.jpg"], "not an hcnet checkpoint or training work"),
        (
            [
                "--checkpoint={run}",
                *(
                    f"{{tmp}}/{f}"
                    for f in (
                        "empty.jpg",
                        "random.jpg",
                        "cut.jpg",
                        "text.png",
                        "bomb.png",
                        "huge.png",
                        "missing.png",
                        "empty",
                    )
                ),
            ],
            "none of the 8 files could be used (above: why); nothing was predicted",
        ),
        (["--checkpoint={run}", "{tmp}/ok.jpg", "{tmp}/huge.png"], "1 of the 2 files skipped"),
        (["--checkpoint={run}", "--top=0", "{tmp}/ok.jpg"], "--top=0: 0 is not a positive integ"),
        (["--checkpoint={run}", "--crop_pct=2", "{tmp}/ok.jpg"], "--crop_pct=2: 2.0 is not numb"),
        (["--checkpoint={run}", "--step=4", "{tmp}/ok.jpg"], "--step: hcnet.tools.predict does "),
        (["--checkpoint={damaged}", "{tmp}/ok.jpg"], "a damaged checkpoint, or not this model's"),
        (["--checkpoint={nobucket}/run", "{tmp}/ok.jpg"], "bucket {nobucket} does not exist"),
    ],
    "hcnet.tools.visualize": [
        (["--checkpoint={run}", "{tmp}/ok.jpg"], "--out is required"),
        (["--checkpoint={run}", "--out={tmp}/afile", "{tmp}/ok.jpg"], "a file, not a folder"),
        (
            ["--checkpoint={run}", "--out={tmp}/figures", "{tmp}/bomb.png"],
            "none of the 1 files could be used",
        ),
        (
            ["--checkpoint={run}", "--out={tmp}/f", "--target_class=10", "{tmp}/ok.jpg"],
            "--target_class=10: the model has 10 classes; give 0 to 9",
        ),
        (["--checkpoint={run}", "--out={nobucket}/f", "{tmp}/ok.jpg"], "{nobucket} does not exi"),
    ],
    "hcnet.tools.count": [
        (["--variant=XL"], "model.variant='XL': one of mu, T, S, B"),
        (["--heat_operator=mean9"], "model.heat_operator='mean9': one of mean8, learned3, learn"),
        (["--image_size=0"], "--image_size=0: 0 is not integer >= 32"),
        (["--depths=3,8,18"], "four positive depths"),
        (["--depths=a,b,c,d"], "--depths=a,b,c,d: four integers, e.g. 3,8,18,3"),
        (["--image_width=16"], "--image_width=16: 16 is not integer >= 32"),
        (["--variant=mu", "stray"], "unexpected arguments ['stray']"),
    ],
    "hcnet.tools.convert": [
        ([], "--from_torch is required"),
        (["--from_torch={tmp}/missing.pth", "--variant=mu", "--out={tmp}/c"], "no such file"),
        (["--from_torch={tmp}/ok.jpg", "--variant=mu", "--out={tmp}/c"], "unknown suffix '.jpg'"),
        (["--from_torch={tmp}/empty.pth", "--variant=mu", "--out={tmp}/c"], "an empty file"),
        (
            ["--from_torch={tmp}/random.safetensors", "--variant=mu", "--out={tmp}/c"],
            "not a readable .safetensors file",
        ),
        (["--from_torch={nobucket}/w.pth", "--variant=mu", "--out={tmp}/c"], "does not exist"),
    ],
    "hcnet.tools.export": [
        (["--workdir={run}"], "--out is required"),
        (["--workdir={tmp}/empty", "--out={tmp}/e"], "not a training workdir"),
        (["--workdir={run}", "--out={tmp}/afile"], "a file, not a folder"),
        (["--workdir={run}", "--out={tmp}/e", "--step=77"], "no checkpoint at step 77"),
        (["--workdir={run}", "--out={tmp}/e", "--format=onnx"], "--format=onnx: value should be"),
        (["--format=torch", "--checkpoint={run}", "--out={tmp}/e.xyz"], "ends in .pth, .pt or"),
        (
            ["--format=stablehlo", "--checkpoint={run}", "--out={tmp}/h", "--image_size=16"],
            "--image_size=16: 16 is not integer >= 32",
        ),
        (["--workdir={damaged}", "--out={tmp}/e"], "a damaged checkpoint, or not this model's"),
        (["--workdir={run}", "--out={nobucket}/e"], "bucket {nobucket} does not exist"),
    ],
    "hcnet.tools.bench": [
        (["--variant=XL"], "variant='XL': one of mu, T, S, B"),
        (["--dtype=int8"], "config.model.dtype='int8': one of float32, bfloat16, float16"),
        (["--mode=fly"], "--mode='fly': one of train, infer"),
        (["--devices=0"], "--devices=0: 0 is not a positive integer"),
        (["--devices=99"], "--devices=99: only 1 cpu devices here"),
        (["--batch=0"], "--batch=0: 0 is not a positive integer"),
        (["--block_loop=while"], "block_loop='while': one of auto, scan, unroll"),
        (["--step=3"], "--step: hcnet.tools.bench does not take it"),
    ],
    "hcnet.tools.roofline": [
        (["--variant=XL"], "model.variant='XL'"),
        (["--act_bytes=3"], "--act_bytes=3: must be 1, 2 or 4"),
        (["--image_size=0"], "--image_size=0: 0 is not integer >= 32"),
    ],
    "hcnet.tools.data_bench": [
        (["--seconds=-1"], "--seconds=-1: -1.0 is not number >= 0.01"),
        (["--batch=0"], "--batch=0: 0 is not a positive integer"),
        (["--variant=XL"], "model.variant='XL'"),
    ],
    "hcnet.tools.prepare": [
        ([], "--dataset is required"),
        (
            ["--dataset=image_folder", "--manual_dir={tmp}/empty", "--data_dir={tmp}/tfds"],
            "has no images in <split>/<class>/ subfolders",
        ),
        (
            ["--dataset=image_folder", "--manual_dir={tmp}/missing", "--data_dir={tmp}/tfds"],
            "--manual_dir={tmp}/missing must be a folder laid out as ROOT/<split>/<class>/<image>",
        ),
        (
            ["--dataset=imagenet2012", "--manual_dir={tmp}/empty", "--data_dir={tmp}/tfds"],
            "ILSVRC2012_img_train.tar is missing",
        ),
        (["--dataset=no_such_dataset", "--data_dir={tmp}/tfds"], "is not a TFDS dataset"),
        (["--dataset=imagenet2012", "--convert", "--data_dir={tmp}/tfds"], "holds no TFDS build"),
        (["--dataset=hcnet_digits", "--data_dir={nobucket}/tfds"], "{nobucket} does not exist"),
    ],
    "hcnet.tools.aot": [
        (["{smoke}"], "--topology must have a value"),
        (["{smoke}", "--topology=v9-8"], "--topology='v9-8': a Cloud TPU slice name"),
        (["{smoke}", "--topology=v5e-3"], "N must be a power of two"),
        (["{smoke}", "--topology=h100-0"], "a node of N GPUs, <gpu>-N"),
    ],
    "hcnet.tools.aot_table": [
        (["--nope"], "Unknown command line flag 'nope'"),
        (["--out={tmp}/table.md"], "--out: hcnet.tools.aot_table does not take it"),
        # the reports are its arguments: read, and this one is not a report
        (["{tmp}/bad_config/config.json"], "not a report written by hcnet.tools.aot --out"),
    ],
}
COMMANDS = [
    "train.py",
    "eval.py",
    *(f"hcnet.tools.{m.name}" for m in pkgutil.iter_modules(tools.__path__)),
]


def png_header(width: int, height: int) -> bytes:
    """A PNG that promises width x height pixels and holds almost none: a decompression bomb, as
    far as its reader can tell before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def bad_inputs(tmp: pathlib.Path, run: pathlib.Path) -> dict:
    """The files the matrix names, and its placeholders' values."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), np.uint8)).save(tmp / "ok.jpg")
    jpeg = (tmp / "ok.jpg").read_bytes()
    files = {
        "afile": b"x",
        "empty.jpg": b"",
        "empty.pth": b"",
        "random.jpg": rng.bytes(2000),
        "random.safetensors": rng.bytes(100),
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "text.png": b"hello, world",
        "bomb.png": png_header(30000, 30000),  # over twice Pillow's limit: refused as it opens
        "huge.png": png_header(12000, 9000),  # over it: Pillow only warns
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    (tmp / "empty").mkdir()
    for name in ("bad_config", "damaged"):
        shutil.copytree(run, tmp / name, ignore=shutil.ignore_patterns("eval"))
    (tmp / "bad_config" / "config.json").write_text('{"model": {"variant": "mu"')  # cut short
    for f in (tmp / "damaged" / "checkpoints").glob("*/params/_METADATA"):
        f.write_text("not JSON")
    return {"tmp": tmp, "run": run, "damaged": tmp / "damaged"}


@pytest.mark.heavy
@pytest.mark.parametrize("command", COMMANDS)
def test_every_bad_input_of_a_command_ends_in_one_line(command, smoke_run, bucket, tmp_path):
    """A process per command runs its rows (tests/bad_input_driver.py); each ends with status 1
    and its last line `error: ...` saying what it should, with no traceback anywhere."""
    run_dir, _, _ = smoke_run
    values = bad_inputs(tmp_path, run_dir)
    values.update(
        smoke="--config=configs/smoke.py",
        new=f"--workdir={tmp_path}/new",
        bucket=bucket,
        nobucket="gs://hcnet-no-such-bucket",
    )
    rows = [
        ([a.format(**values) for a in args], said.format(**values))
        for args, said in MATRIX[command]
    ]
    (tmp_path / "rows.json").write_text(json.dumps([args for args, _ in rows]))
    env = {**env_with(1), "HCNET_KEEP_MALLOC": "1"}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/bad_input_driver.py"),
            command,
            str(tmp_path / "rows.json"),
            str(tmp_path / "said.json"),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    results = json.loads((tmp_path / "said.json").read_text())
    wrong = []
    for (args, said), got in zip(rows, results):
        lines = got["output"].strip().splitlines() or [""]
        if (
            got["status"] != 1
            or "Traceback" in got["output"]
            or not (lines[-1].startswith("error: ") and said in lines[-1])
        ):
            wrong.append(
                f"{command} {' '.join(args)}\n  status {got['status']}, said:\n"
                + "\n".join("    " + line for line in lines[-6:])
            )
    assert not wrong, "\n".join(wrong)
    assert not (tmp_path / "new" / "checkpoints").exists()  # stopped before anything long ran


def test_the_matrix_has_rows_for_every_command():
    """A new command cannot come without its bad inputs."""
    assert sorted(MATRIX) == sorted(COMMANDS)
    assert all(len(rows) >= 2 for rows in MATRIX.values())


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


NUMBERS = [  # (task, field) of every number in the config
    (task, field, type(value))
    for task in tasks.TASKS
    for field, value in config_lib.flatten(config_lib.defaults().to_dict()).items()
    if isinstance(value, (int, float)) and not isinstance(value, bool)
]


EDGES = {
    int: [-(2**40), -2, -1, 0, 1, 2**31, 2**40],
    float: [-math.inf, -1.0, 0.0, 1e30, math.inf, math.nan],
}


def taken_or_refused(task: str, field: str, value) -> None:
    """--config.FIELD=value (a value of the field's type: the flag parser refuses any other in one
    line) through the checks every command runs before anything long (the config's, the task's,
    the schedule's): accepted, or refused as a ConfigError; no other exception."""
    c = config_lib.defaults()
    c.task = task
    *parents, leaf = field.split(".")
    functools.reduce(lambda n, p: n[p], parents, c)[leaf] = value
    try:
        checks.validate(c, 8)
        tasks.create(c)
        config_lib.steps(c, 1000)
    except ConfigError:
        pass


def test_every_number_field_takes_or_refuses_the_edge_values():
    for task, field, kind in NUMBERS:
        for value in EDGES[kind]:
            taken_or_refused(task, field, value)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_number_given_to_a_config_field_is_taken_or_refused_in_one_line(data):
    task, field, kind = data.draw(st.sampled_from(NUMBERS))
    if kind is int:
        value = data.draw(st.integers(-(2**40), 2**40))
    else:
        value = data.draw(st.floats())
    taken_or_refused(task, field, value)
