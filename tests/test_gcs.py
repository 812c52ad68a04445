"""gs:// everywhere, against a real GCS-compatible server (fake-gcs-server on 127.0.0.1;
tests/gcs.py): training with its workdir and data in a bucket, kills and hosts, exports, evaluation,
prediction, the run's growing files, and the one-line errors for buckets, credentials and
permissions."""

import contextlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from test_checkpoints import abstract, tiny_state
from test_train import (
    ROOT,
    _run_until,
    assert_same,
    env_with,
    params_of,
    train_cmd,
    train_in_two_processes,
)

import hcnet
from hcnet import checkpoint, monitor, paths, tools
from hcnet.errors import UserError
from hcnet.serve.export import export

checkpoint.configure_orbax()
TIMING = ("train/images_per_s", "train/images_per_s_per_device", "train/input_wait")


def scalars(logdir) -> dict:
    """{tag: [(step, value)]} as TensorBoard reads the run's event files, purges applied. Those in a
    bucket are copied here first: with TensorFlow installed TensorBoard reads gs:// through
    TensorFlow's own client, which cannot be pointed at the emulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        for f in paths.path(logdir).iterdir():
            if f.name.startswith("events.out.tfevents."):
                paths.copy_file(f, os.path.join(tmp, f.name))
        events = EventAccumulator(tmp)
        events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_metrics_and_events_arrive_whole_and_a_restart_replaces_what_a_killed_run_wrote(
    where, tmp_path, request
):
    root = (
        paths.path(tmp_path)
        if where == "local"
        else paths.path(request.getfixturevalue("bucket")) / "run"
    )
    first = monitor.create_writer(root)  # a run that logs steps 1-3 and is killed (never closed)
    for step in (1, 2, 3):
        first.write_scalars(step, {"train/loss": 10.0 + step})
    assert [r["step"] for r in monitor.read_metrics(root)] == [
        1,
        2,
        3,
    ]  # each write is there as it happens
    assert scalars(root)["train/loss"] == [(1, 11.0), (2, 12.0), (3, 13.0)]
    if where == "local":  # the kill cut a line short
        with open(root / monitor.METRICS_FILE, "a") as f:
            f.write('{"step": 4, "train/lo')
    second = monitor.create_writer(root, first_step=3)  # resumed from the checkpoint of step 2
    for step in (3, 4):
        second.write_scalars(step, {"train/loss": 20.0 + step})
    second.close()
    rows = monitor.read_metrics(root)
    assert [(r["step"], r["train/loss"]) for r in rows] == [
        (1, 11.0),
        (2, 12.0),
        (3, 23.0),
        (4, 24.0),
    ]
    assert scalars(root)["train/loss"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    assert len([p for p in root.iterdir() if p.name.startswith("events.out.tfevents.")]) == 2


def test_event_files_sort_in_the_order_they_were_started(tmp_path):
    """TensorBoard reads a folder's event files in name order; a process's 10th must come after its
    9th."""
    writers = [monitor.TensorBoardWriter(tmp_path / str(i), first_step=1) for i in range(12)]
    names = [next(p.name for p in (tmp_path / str(i)).iterdir()) for i in range(12)]
    for w in writers:
        w.close()
    assert sorted(names) == names


def test_a_log_file_on_gcs_rewrites_the_object_on_each_flush(bucket):
    path = paths.path(bucket) / "log.txt"
    log = paths.LogFile(path, b"kept\n")
    assert path.read_bytes() == b"kept\n"
    log.write(b"a\n")
    assert path.read_bytes() == b"kept\n"  # written on flush, not before
    log.flush()
    log.write(b"b\n")
    log.close()
    assert path.read_bytes() == b"kept\na\nb\n"


def test_gcs_checkpoints_keep_the_latest_n_plus_the_best_and_never_list_a_half_written_step(bucket):
    workdir = paths.path(bucket) / "run"
    ckpt = checkpoint.Checkpoints(workdir, keep=2, async_save=True)
    for step, top1 in {1: 0.9, 2: 0.1, 3: None, 4: 0.2}.items():
        ckpt.save(
            step,
            tiny_state(step),
            {"next_index": step},
            None if top1 is None else {"eval/top1": top1},
        )
    ckpt.wait()
    assert ckpt.steps() == [1, 3, 4]
    ckpt.close()
    d = workdir / checkpoint.CHECKPOINTS
    markers = [p.name for p in (d / "4").iterdir() if "commit" in p.name]
    assert markers  # on gs:// a step is complete when its marker file is there (no rename)
    for (
        name
    ) in markers:  # step 4 as a save cut short by a kill leaves it: every file but the marker
        (d / "4" / name).unlink()
    ckpt = checkpoint.Checkpoints(workdir, keep=2)
    assert ckpt.steps() == [1, 3]
    step, state, data = ckpt.restore(abstract(tiny_state(0)))
    assert step == 3 and data == {"next_index": 3} and float(state["params"]["w"][0, 0]) == 3.0
    for root, _, files in paths.walk(
        d / "3" / "params"
    ):  # a listed step whose files do not read: the one before
        for f in files:
            (root / f).write_bytes(b"garbage")
    assert ckpt.restore(abstract(tiny_state(0)))[0] == 1
    ckpt.close()


class _Denied(http.server.BaseHTTPRequestHandler):
    """Answers every request as Cloud Storage answers credentials without access: 403, JSON
    error."""

    def _deny(self):
        body = json.dumps(
            {"error": {"code": 403, "message": "caller does not have storage.objects.list access"}}
        )
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_DELETE = _deny

    def log_message(self, *args):
        pass


def test_bucket_credential_and_permission_problems_are_one_line(
    gcs_emulator, monkeypatch, tmp_path
):
    with pytest.raises(
        UserError,
        match=r"^gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist; "
        r"create it with `gcloud storage buckets create",
    ):
        paths.check("gs://no-such-bucket/run", write=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Denied)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with monkeypatch.context() as m:
            m.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
            with pytest.raises(
                UserError,
                match=r"^gs://denied/x: these credentials may not list, write and delete "
                r"objects in gs://denied \(403 .*\); grant them roles/storage.objectAdmin",
            ):
                paths.check("gs://denied/x", write=True)
    finally:
        server.shutdown()
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # the real service, with no credentials anywhere
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    with pytest.raises(
        UserError,
        match=r"^gs://any/run: no Google Cloud credentials on this machine; .*gcloud auth "
        r"application-default login",
    ):
        paths.check("gs://any/run")
    paths.check(tmp_path)  # local paths need nothing


def test_gcs_where_only_a_local_path_works_is_one_line(tmp_path):
    from hcnet.data import prepare

    with pytest.raises(
        UserError,
        match=r"^--data_dir=gs://b/tfds: converting writes ArrayRecord files, which only "
        r"a local folder takes",
    ):
        prepare.to_array_record("imagenet2012", "gs://b/tfds")
    with pytest.raises(
        UserError,
        match=r"^--manual_dir=gs://b/tars: the ImageNet tars must be on this machine's disk",
    ):
        prepare.check_imagenet_tars("gs://b/tars")


@pytest.mark.heavy
def test_smoke_trains_on_gcs_data_into_a_gcs_workdir_then_exports_loads_evaluates_and_predicts(
    bucket, tmp_path
):
    from hcnet.tools import predict as predict_tool
    from hcnet.tools import prepare as prepare_tool

    data_dir, workdir, out = (
        f"{bucket}/tfds",
        paths.path(bucket) / "run",
        paths.path(bucket) / "exported",
    )
    with contextlib.redirect_stdout(
        io.StringIO()
    ) as said:  # built locally, uploaded by the project's command
        tools.invoke(prepare_tool.main, ["--dataset=hcnet_digits", f"--data_dir={data_dir}"])
    assert f"ready in {data_dir}/hcnet_digits/1.0.0" in said.getvalue()
    digits = {
        "dataset.name": "hcnet_digits",
        "dataset.data_dir": data_dir,
        "dataset.train_split": "train",
        "dataset.eval_split": "test[:40]",
        "profile_steps": "(2, 4)",
    }
    # train.py, as a user runs it (its own process: the trace it takes crashes jax.profiler in a
    # process that has loaded libtpu 0.0.52, as this suite's workers may have)
    flags = [f"--config.{k}={v}" for k, v in digits.items()]
    proc = subprocess.run(
        train_cmd(os.fspath(workdir), *flags),
        env=env_with(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 8 eval: eval/top1" in proc.stdout
    rows = monitor.read_metrics(workdir)
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6, 8]
    assert [r["step"] for r in rows if "eval/top1" in r] == [4, 8]
    assert [r["eval/count"] for r in rows if "eval/count" in r] == [40, 40]
    assert [s for s, _ in scalars(workdir)["eval/top1"]] == [4, 8]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        4,
        8,
    ]
    assert json.loads((workdir / "config.json").read_text())["dataset"]["data_dir"] == data_dir
    assert json.loads((workdir / "model.json").read_text())["num_classes"] == 10
    assert (workdir / "commit.txt").read_text().strip()
    assert any(files for _, _, files in paths.walk(workdir / "profile"))  # the trace, uploaded

    exported = export(workdir, out, ema=True)
    assert str(exported) == str(out) and (out / "config.json").exists()
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(hcnet.load(out)(x), hcnet.load(workdir, ema=True)(x))

    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"--workdir={workdir}", "--split=test[:20]"],
        env=env_with(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [written] = list((workdir / "eval").iterdir())
    assert written.name == "hcnet_digits_test__20_32_0.875_step8.json"
    report = json.loads(written.read_text())
    assert report["results"]["raw"]["count"] == 20 and report["results"]["ema"]["count"] == 20

    images = paths.path(bucket) / "images"  # image files on gs:// too, and one that is not an image
    from PIL import Image
    from sklearn.datasets import load_digits

    for i, digit in enumerate(load_digits().images[-3:]):
        with (images / f"{i}.png").open("wb") as f:
            Image.fromarray(np.uint8(digit * 255 / 16)).save(f, format="PNG")
    (images / "bad.png").write_bytes(b"not an image")
    files = [str(images / f"{i}.png") for i in range(3)] + [str(images / "bad.png")]
    with contextlib.redirect_stdout(io.StringIO()) as said, pytest.raises(SystemExit) as exit_:
        tools.invoke(predict_tool.main, [f"--checkpoint={out}", "--json", *files])
    assert exit_.value.code == "error: 1 of the 4 files skipped (above: why)"
    answer = json.loads(said.getvalue())
    assert sorted(answer["predictions"]) == files[:3] and list(answer["skipped"]) == files[3:]
    assert all(len(top) == 5 for top in answer["predictions"].values())


def checkpoint_steps(workdir) -> list[int]:
    """The committed checkpoint steps of a workdir, as a restarting run lists them."""
    try:
        with checkpoint._reader(workdir) as manager:
            return list(manager.all_steps())
    except FileNotFoundError:
        return []


@pytest.mark.heavy
def test_sigkill_during_a_gcs_save_then_rerun_ends_bitwise_identical_with_whole_metrics(
    smoke_run, bucket
):
    """Killed while the step-8 checkpoint is being written to the bucket; the rerun resumes from
    step 4. (SIGTERM's save takes the same path as a local one: tests/test_train.py.)"""
    run_dir, _, _ = smoke_run
    workdir = paths.path(bucket) / "run"
    env = env_with(8)

    # on a slow machine the step-4 save (asynchronous) may still be uploading at step 8's eval line:
    # the kill waits for it to commit, so that it lands in step 8's save, not step 4's. A thread
    # watches for that commit from the start, so that at the eval line the kill does not wait for a
    # listing of the bucket (on an idle machine step 8's save can finish within one)
    committed_4, done = threading.Event(), threading.Event()

    def watch():
        while not (committed_4.is_set() or done.is_set()):
            if 4 in checkpoint_steps(workdir):
                committed_4.set()
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    try:
        killed = _run_until(
            train_cmd(workdir), env, "step 8 eval", signal.SIGKILL, ready=committed_4.is_set
        )
    finally:
        done.set()
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = subprocess.run(train_cmd(workdir), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resumed from {workdir}/checkpoints/4\n" in rerun.stdout  # step 8 had not committed
    assert_same(params_of(workdir), params_of(run_dir))
    assert_same(params_of(workdir, ema=True), params_of(run_dir, ema=True))
    # every row once, as the uninterrupted run wrote it (what the killed run logged past step 4 is
    # replaced)
    assert without_timing(monitor.read_metrics(workdir)) == without_timing(
        monitor.read_metrics(run_dir)
    )
    assert scalars(workdir)["train/loss"] == scalars(run_dir)["train/loss"]
    assert scalars(workdir)["eval/top1"] == scalars(run_dir)["eval/top1"]


@pytest.mark.heavy
def test_two_processes_of_four_devices_train_into_one_gcs_workdir_like_one_of_eight(
    smoke_run, bucket
):
    """(The multi-host test: jax.distributed, gloo collectives, one process printing, orbax's
    multi-process save to the bucket, an exact evaluation across both processes.)"""
    run_dir, _, _ = smoke_run
    workdir = paths.path(bucket) / "run"
    outs = train_in_two_processes(workdir)
    assert "step 8 eval" in outs[0] and "step" not in outs[1]  # process 1 prints no progress
    rows = monitor.read_metrics(workdir)
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6, 8] and rows[-1][
        "eval/count"
    ] == 40
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        4,
        8,
    ]
    assert_same(params_of(workdir), params_of(run_dir), rtol=1e-5)
