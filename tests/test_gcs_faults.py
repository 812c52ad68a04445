"""Cloud Storage that fails a run (tests/gcs_faults.py, a proxy in front of the emulator): with its
data, workdir and checkpoints in a bucket, a run whose requests meet 503s, 429s, connections reset
after the service did the work, or stalls ends exactly as a clean run; a bucket deleted or turned
403 mid-run ends it in one line within a bound, and the last complete checkpoint restores."""

import contextlib
import io
import subprocess
import threading
import time

import gcs
import gcs_faults
import pytest
from conftest import once_per_session
from test_gcs import checkpoint_steps, scalars, without_timing
from test_train import _run_until, assert_same, env_with, params_of, train_cmd

from hcnet import monitor, paths, tools
from hcnet.errors import FAULT_EXIT

RETRY_S = 10  # config.storage_retry_s for the runs here (300 by default)


def digits_flags(data_dir) -> list[str]:
    digits = {
        "dataset.name": "hcnet_digits",
        "dataset.data_dir": data_dir,
        "dataset.train_split": "train",
        "dataset.eval_split": "test[:40]",
        "storage_retry_s": RETRY_S,
    }
    return [f"--config.{k}={v}" for k, v in digits.items()]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, worker_id):
    """hcnet_digits prepared here, and an uninterrupted local run of the smoke recipe on it: what
    every run through the faulty proxy must end as. (data folder, run folder)"""

    def make(where):
        from hcnet.tools import prepare as prepare_tool

        data, run = where / "tfds", where / "run"
        with contextlib.redirect_stdout(io.StringIO()):
            tools.invoke(prepare_tool.main, ["--dataset=hcnet_digits", f"--data_dir={data}"])
        proc = subprocess.run(
            train_cmd(run, *digits_flags(data)), env=env_with(8), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {"data": str(data), "run": str(run)}

    saved = once_per_session(tmp_path_factory, worker_id, "digits-run", make)
    return saved["data"], saved["run"]


def train_on_digits(workdir, bucket, env) -> subprocess.CompletedProcess:
    """train.py on the digits in `bucket`, into `workdir`, with `env`'s clients."""
    cmd = train_cmd(workdir, *digits_flags(f"{bucket}/tfds"))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def through_proxy(gcs_emulator, bucket, digits_run):
    """(the bucket with the digits data in it, a faulty proxy, the environment that points every
    client of a run at the proxy)"""
    paths.copy_tree(digits_run[0], f"{bucket}/tfds")  # straight to the emulator
    proxy = gcs_faults.Proxy(gcs_emulator.url)
    env = {**env_with(8), **gcs.environment(proxy.port, closed_port=gcs.free_port())}
    yield bucket, proxy, env
    proxy.close()


@pytest.mark.heavy
def test_a_run_through_a_failing_cloud_storage_ends_as_a_clean_run(through_proxy, digits_run):
    """Every kind of fault in one run (each run is most of a minute here): 503s, 429s, resets after
    the work was done, stalls, each met by every client several times."""
    bucket, proxy, env = through_proxy
    # 5% of the run's ~400 requests; a client waits a second or two before each retry
    proxy.kind, proxy.rate, proxy.stall_s = "mixed", 0.05, 1.0
    workdir = paths.path(bucket) / "run"
    start = time.monotonic()
    proc = train_on_digits(workdir, bucket, env)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(proxy.counts[k] >= 2 for k in gcs_faults.KINDS), proxy.counts
    reference = digits_run[1]
    assert_same(params_of(workdir), params_of(reference))
    assert_same(params_of(workdir, ema=True), params_of(reference, ema=True))
    assert without_timing(monitor.read_metrics(workdir)) == without_timing(
        monitor.read_metrics(reference)
    )
    assert scalars(workdir)["eval/top1"] == scalars(reference)["eval/top1"]
    # the run's own retries are said at most once a minute
    assert proc.stderr.count("Cloud Storage: ") <= 1 + took // 60


def refused_at_step_8(workdir, proxy, env, data_dir, status: int) -> tuple:
    """Runs until step 8's evaluation (step 4's checkpoint committed, which a thread watches for
    from the start), then the bucket answers every request with `status` while step 8 is saved;
    (the finished process, seconds from the refusal to its end)."""
    committed_4, done, when = threading.Event(), threading.Event(), {}

    def watch():
        while not (committed_4.is_set() or done.is_set()):
            if 4 in checkpoint_steps(workdir):
                committed_4.set()
            time.sleep(0.05)

    def refuse():
        if committed_4.is_set():
            proxy.refuse, when["t"] = status, time.monotonic()
        return committed_4.is_set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        cmd = train_cmd(workdir, *digits_flags(data_dir))
        proc = _run_until(cmd, env, "step 8 eval", 0, ready=refuse)  # signal 0: none sent
    finally:
        done.set()
    return proc, time.monotonic() - when["t"]


@pytest.mark.heavy
def test_a_bucket_deleted_or_turned_403_mid_run_ends_it_in_one_line_and_the_rerun_resumes(
    through_proxy, digits_run
):
    bucket, proxy, env = through_proxy
    workdir = paths.path(bucket) / "run"
    bound = RETRY_S + 60  # our retries, then the clients' own (gcsfs: about 30 s)
    for status in (404, 403):
        proxy.refuse = None
        proc, took = refused_at_step_8(workdir, proxy, env, f"{bucket}/tfds", status)
        assert proc.returncode == FAULT_EXIT and took < bound, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {workdir}") and "Cloud Storage failed" in last, last
        assert "the last complete checkpoint stands" in last
        if status == 403:  # the second run: the first one's step 4 stood
            assert f"resumed from {workdir}/checkpoints/4" in proc.stdout
    proxy.refuse = None
    rerun = train_on_digits(workdir, bucket, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints/4\n" in rerun.stdout
    assert_same(params_of(workdir), params_of(digits_run[1]))
