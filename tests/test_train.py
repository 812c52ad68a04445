"""train.py end to end on the smoke config: metrics, checkpoints, resume, faults, determinism,
hosts."""

import contextlib
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from runs import smoke

import hcnet
import hcnet.errors
from hcnet import checkpoint, monitor, tools, trainer
from hcnet.serve.export import export
from hcnet.tools import export as export_tool

ROOT = pathlib.Path(__file__).resolve().parent.parent
checkpoint.configure_orbax()


def params_of(run_dir, **kw) -> dict:
    return jax.tree.map(
        np.asarray, nnx.to_pure_dict(nnx.state(hcnet.load(run_dir, **kw), nnx.Param))
    )


def assert_same(a: dict, b: dict, rtol=0.0):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) > 10
    for x, y in zip(la, lb):
        if rtol == 0.0:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol)


def train_cmd(run_dir, *flags):
    return [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={ROOT / 'configs/smoke.py'}",
        f"--workdir={run_dir}",
        *flags,
    ]


def env_with(devices: int = 8) -> dict:
    env = dict(os.environ)
    flags = [
        f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
    ]  # conftest's others stay
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_smoke_run_writes_metrics_checkpoints_and_run_files(smoke_run):
    run_dir, result, console = smoke_run
    assert result["step"] == 8 and not result["preempted"]
    rows = monitor.read_metrics(run_dir)
    train_rows = [r for r in rows if "train/loss" in r]
    eval_rows = [r for r in rows if "eval/top1" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8] and [r["step"] for r in eval_rows] == [
        4,
        8,
    ]
    for r in train_rows:
        assert np.isfinite(r["train/loss"]) and r["train/lr"] > 0 and r["train/images_per_s"] > 0
        assert 0 <= r["train/input_wait"] <= 1
    for r in eval_rows:  # exact: all 40 examples of validation[:40], padding excluded, raw and EMA
        assert r["eval/count"] == 40 and r["eval_ema/count"] == 40
        assert 0 <= r["eval/top1"] <= r["eval/top5"] <= 1 and (40 * r["eval/top1"]) % 1 == 0
    assert result["eval/top1"] == eval_rows[-1]["eval/top1"]
    line = next(ln for ln in console.splitlines() if ln.startswith("step 4/8"))
    for part in ("epoch 0.25", "loss", "lr", "img/s", "/device", "input wait", "eta"):
        assert part in line, (part, line)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    # TensorBoard reads what monitor.TensorBoardWriter wrote, without TensorFlow in the run
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/top1")] == [
        (r["step"], pytest.approx(r["eval/top1"])) for r in eval_rows
    ]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert any(p.is_file() for p in (run_dir / "profile").rglob("*"))
    assert json.loads((run_dir / "config.json").read_text())["model"]["variant"] == "mu"
    assert json.loads((run_dir / "model.json").read_text())["num_classes"] == 10
    assert (run_dir / "commit.txt").read_text().strip()
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [
        4,
        8,
    ]
    data = json.loads(next((run_dir / "checkpoints/8/data").glob("*")).read_text())
    assert data["next_index"] > 0  # the iterator state travels with the weights


@pytest.mark.heavy
def test_load_and_export_give_the_trained_model(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    raw, ema = params_of(run_dir), params_of(run_dir, ema=True)
    old = params_of(run_dir, step=4)

    def leaf(p):
        return jax.tree.leaves(p)[0]

    assert not np.array_equal(leaf(raw), leaf(ema)) and not np.array_equal(leaf(raw), leaf(old))
    out = export(run_dir, tmp_path / "exported", ema=True)
    assert_same(params_of(out), ema)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(hcnet.load(out)(x), hcnet.load(run_dir, ema=True)(x))
    with pytest.raises(SystemExit, match="error: .*not a training workdir"):
        tools.invoke(export_tool.main, [f"--workdir={tmp_path}", f"--out={tmp_path / 'x'}"])


@pytest.mark.heavy
def test_same_config_and_seed_give_bitwise_identical_parameters(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    with open(os.devnull, "w") as null:
        with contextlib.redirect_stdout(null):
            trainer.train_and_evaluate(smoke(), tmp_path)
    assert_same(params_of(tmp_path), params_of(run_dir))
    assert_same(params_of(tmp_path, ema=True), params_of(run_dir, ema=True))


def _run_until(cmd, env, marker: str, sig, ready=None) -> subprocess.CompletedProcess:
    """Starts cmd, sends `sig` once a stdout line starts with `marker` (and then `ready()` holds,
    polled for up to 2 minutes); returns the finished process."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(marker):
            deadline = time.monotonic() + 120
            while ready is not None and not ready() and time.monotonic() < deadline:
                time.sleep(0.2)
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines) + out, err)


@pytest.mark.heavy
def test_sigterm_saves_and_resumes_then_sigkill_mid_save_and_a_rerun_ends_bitwise_identical(
    smoke_run, tmp_path
):
    """SIGTERM after step 2 saves and exits with 75 (to be resumed); the resumed run is killed
    (SIGKILL) while its next checkpoint is being written, right after its eval line; the next run
    resumes and ends as the uninterrupted run did."""
    run_dir, _, _ = smoke_run
    env = env_with(8)
    stopped = _run_until(train_cmd(tmp_path), env, "step 2/8", signal.SIGTERM)
    assert stopped.returncode == hcnet.errors.FAULT_EXIT, stopped.stderr[-2000:]
    assert "stopping at step" in stopped.stdout
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < 8
    marker = (
        "step 4 eval" if saved[-1] < 4 else "step 8 eval"
    )  # (the signal can land after step 4 on a fast machine)
    killed = _run_until(train_cmd(tmp_path), env, marker, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert f"resumed from {tmp_path / 'checkpoints'}/{saved[-1]}" in killed.stdout
    rerun = subprocess.run(
        train_cmd(tmp_path), env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0 and "resumed from" in rerun.stdout, rerun.stderr[-2000:]
    assert_same(params_of(tmp_path), params_of(run_dir))
    assert_same(params_of(tmp_path, ema=True), params_of(run_dir, ema=True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_in_two_processes(workdir) -> list[str]:
    """The smoke config as two processes of 4 fake devices into `workdir`; their stdouts."""
    address = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            train_cmd(
                workdir, f"--coordinator={address}", "--num_processes=2", f"--process_id={i}"
            ),
            env=env_with(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


@pytest.mark.heavy
def test_restore_onto_another_mesh_shape(smoke_run, tmp_path):
    """A checkpoint of data=8 continues as data=2 x fsdp=4 with split parameters, to the same
    weights."""
    run_dir, _, _ = smoke_run
    shutil.copytree(run_dir / "checkpoints", tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints/8")  # resume from step 4
    c = smoke(**{"mesh.data": 2, "mesh.fsdp": 4, "mesh.fsdp_min_size": 1024})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer.train_and_evaluate(c, tmp_path)
    assert f"resumed from {tmp_path / 'checkpoints'}/4" in out.getvalue()
    assert_same(params_of(tmp_path), params_of(run_dir), rtol=1e-4)
    from hcnet import sharding

    mesh = sharding.make_mesh(2, 4)
    assert any(
        sharding.param_sharding(mesh, np.shape(p), 1024).spec != ()
        for p in jax.tree.leaves(params_of(run_dir))
    )


@pytest.mark.heavy
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    c = smoke(
        **{
            "optim.lr": 1e30,
            "optim.warmup_steps": 0,
            "checkpoint_every_steps": 1,
            "log_every_steps": 1,
            "optim.ema_decay": 0.0,
            "augment.randaugment": "",
        }
    )
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss or gradient at step 2 .*last good checkpoint is step 1",
    ):
        trainer.train_and_evaluate(c, tmp_path)
    assert sorted(
        int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()
    ) == [1]


@pytest.mark.heavy
def test_a_task_defined_outside_hcnet_trains_with_its_own_loss_evaluator_and_best_metric(
    tmp_path, monkeypatch
):
    """The seam: the loop runs a task it was never told about (tests/toy_task.py), registered by
    name."""
    import toy_task

    from hcnet import tasks

    monkeypatch.setitem(tasks.TASKS, "toy", "toy_task")
    c = smoke(
        **{
            "task": "toy",
            "total_steps": 4,
            "best_metric": "probe/first_logit",
            "optim.ema_decay": 0.0,
        }
    )
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        result = trainer.train_and_evaluate(c, tmp_path)
    rows = monitor.read_metrics(tmp_path)
    assert [r["step"] for r in rows if "probe/first_logit" in r] == [4]
    assert not any("eval/top1" in r for r in rows)
    # squared error on probabilities is at most 2 per example; cross-entropy at chance would be
    # log(10)
    assert 0 < result["train/loss"] <= 2 * toy_task.LOSS_SCALE and result["train/loss"] > 10
    with pytest.raises(
        hcnet.errors.ConfigError,
        match=r"config.best_metric='eval/top1': one of the evaluators' "
        r"metrics \(probe/first_logit",
    ):
        trainer.train_and_evaluate(smoke(task="toy", best_metric="eval/top1"), tmp_path / "other")
    with pytest.raises(
        hcnet.errors.ConfigError,
        match="config.task='nope': one of classification, segmentation, detection, toy",
    ):
        trainer.train_and_evaluate(smoke(task="nope"), tmp_path / "other")


def served_probabilities(run_dir):
    """uint8 crops -> the EMA model's class probabilities, computed by jax here (one compiled
    call)."""
    from hcnet.data.augment import normalize

    model = hcnet.load(run_dir, ema=True)
    step = nnx.jit(lambda m, x: jax.nn.softmax(m(normalize(x)), axis=-1))
    return lambda images: np.asarray(step(model, images))


def test_stablehlo_export_serves_the_models_probabilities_without_hcnet(smoke_run, tmp_path):
    """The serialized program, in a process that imports only jax and numpy, on two batch sizes."""
    run_dir, _, _ = smoke_run
    out = tmp_path / "served"
    with contextlib.redirect_stdout(io.StringIO()):
        tools.invoke(
            export_tool.main,
            ["--format=stablehlo", f"--checkpoint={run_dir}", "--ema", f"--out={out}"],
        )
    info = json.loads((out / "serving.json").read_text())
    assert (
        info["image_size"] == 32
        and len(info["classes"]) == 10
        and info["platforms"] == ["cpu", "cuda", "tpu"]
    )
    rng = np.random.default_rng(0)
    probabilities = served_probabilities(run_dir)
    for batch in (1, 5):
        x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        np.save(tmp_path / "x.npy", x)
        code = (
            "import sys, jax, numpy as np; "
            f"e = jax.export.deserialize(open({str(out / 'model.stablehlo')!r}, 'rb').read()); "
            f"np.save({str(tmp_path / 'p.npy')!r}, "
            f"np.asarray(e.call(np.load({str(tmp_path / 'x.npy')!r})))); "
            "assert 'hcnet' not in sys.modules"
        )
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            env={**os.environ, "PYTHONPATH": ""},
            timeout=120,
        )
        expected = probabilities(x)
        # the same program compiled by the same XLA (equal in practice); the tolerance allows a
        # reassociated float32 sum in the head or the softmax, a few ulps of values at most 1
        np.testing.assert_allclose(
            np.load(tmp_path / "p.npy"), expected, rtol=0, atol=16 * 2.0**-24
        )


# TensorFlow's XLA and jaxlib's are different builds compiling the same float32 program; either may
# reassociate a sum (a convolution's 9*C products, GroupNorm's H*W*C/G means), which moves it by at
# most n * 2^-24 of its magnitude. Through the smoke model's few layers and a softmax this stays far
# below 2^-16 ~ 1.5e-5 in a probability (measured 3.0e-8); a wrong weight or a wrongly scaled input
# moves the probabilities by far more.
SAVEDMODEL_ATOL = 2.0**-16


def test_savedmodel_serves_images_of_any_size_as_evaluation_preprocesses_them(smoke_run, tmp_path):
    """serving_default on photos of two shapes (one resampled vertically first) and two batch sizes.

    Loaded in this process: a SavedModel holds graphs and constants, no Python, so nothing of hcnet
    could run in it."""
    import tensorflow as tf
    from images import photo

    from hcnet.data.transforms import eval_image

    run_dir, _, _ = smoke_run
    out = tmp_path / "savedmodel"
    with contextlib.redirect_stdout(io.StringIO()):
        tools.invoke(
            export_tool.main,
            ["--format=savedmodel", f"--checkpoint={run_dir}", "--ema", f"--out={out}"],
        )
    info = json.loads((out / "serving.json").read_text())
    assert (
        info["format"] == "savedmodel" and info["image_size"] == 32 and len(info["classes"]) == 10
    )
    served = tf.saved_model.load(str(out)).signatures
    batches = [
        np.stack([photo(n, (90, 60)) for n in ("coffee", "chelsea", "rocket")]),
        photo("astronaut", (47, 71))[None],
    ]
    probabilities = [
        served["serving_default"](images=tf.constant(b))["probabilities"].numpy() for b in batches
    ]
    crops = [served["preprocess"](images=tf.constant(b))["images"].numpy() for b in batches]
    for images, crop in zip(batches, crops):
        np.testing.assert_array_equal(crop, [eval_image(im, 32, info["crop_pct"]) for im in images])
    assert [p.shape for p in probabilities] == [(3, 10), (1, 10)]
    expected = served_probabilities(run_dir)(np.concatenate(crops))
    np.testing.assert_allclose(
        np.concatenate(probabilities), expected, rtol=0, atol=SAVEDMODEL_ATOL
    )
    cropped = served["probabilities"](images=tf.constant(crops[0]))["probabilities"].numpy()
    np.testing.assert_array_equal(cropped, probabilities[0])
