"""What clusters do to a long run, done to two processes of the smoke recipe on this machine
(docs/reliability.md): started as SLURM starts them, stopped by SLURM's warning signal, a peer
killed, a peer frozen, process 0 (the coordination service) killed; each ends in one line within
its bound, and the same command then resumes bit for bit. And a local save into a full disk."""

import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from conftest import once_per_session
from test_train import assert_same, env_with, params_of, train_cmd

from hcnet import monitor
from hcnet.errors import FAULT_EXIT

PEER_TIMEOUT = 5  # seconds, so that the tests wait little (60 by default)


def slurm_env(process: int, job: int, port: int) -> dict:
    """Two tasks on one node, as srun sets them (JAX's SLURM detection reads these)."""
    env = env_with(4)
    env.update(
        SLURM_JOB_ID=str(job),
        SLURM_STEP_NODELIST="localhost",
        SLURM_NTASKS="2",
        SLURM_PROCID=str(process),
        SLURM_LOCALID=str(process),
        SLURM_NODEID="0",
        SLURM_STEP_TASKS_PER_NODE="2",
        JAX_COORDINATOR_PORT=str(port),
    )
    return env


class Pair:
    """The smoke recipe as two SLURM tasks of 4 fake devices each into `workdir`; each in its own
    process group (a host: its supervisor and the training process)."""

    def __init__(self, workdir, *flags):
        from gcs import free_port

        job, port = random.randrange(1, 2**20), free_port()
        self.procs = [
            subprocess.Popen(
                train_cmd(workdir, f"--config.peer_timeout={PEER_TIMEOUT}", *flags),
                env=slurm_env(i, job, port),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for i in range(2)
        ]
        self.lines = []

    def until(self, marker: str, ready=None) -> None:
        """Reads process 0's output up to a line starting with `marker` (then until `ready()`)."""
        for line in self.procs[0].stdout:
            self.lines.append(line)
            if line.startswith(marker):
                deadline = time.monotonic() + 120
                while ready is not None and not ready() and time.monotonic() < deadline:
                    time.sleep(0.1)
                return
        raise AssertionError(f"no {marker!r} in {''.join(self.lines)[-2000:]}")

    def signal(self, process: int, sig) -> float:
        os.killpg(self.procs[process].pid, sig)
        return time.monotonic()

    def finish(self, process: int, timeout=300) -> tuple[int, str, str]:
        out, err = self.procs[process].communicate(timeout=timeout)
        if process == 0:
            out = "".join(self.lines) + out
        return self.procs[process].returncode, out, err

    def fault(self, marker: str, victim: int, sig, watched: int) -> tuple[int, str, str, float]:
        """Up to process 0's line starting with `marker`, then `sig` to process `victim`; process
        `watched`'s (status, stdout, stderr) and the seconds it took to end after the signal."""
        try:
            self.until(marker)
            t = self.signal(victim, sig)
            status, out, err = self.finish(watched)
            return status, out, err, time.monotonic() - t
        finally:
            self.kill()

    def kill(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()


@pytest.fixture(scope="session")
def pair_run(tmp_path_factory, worker_id):
    """One uninterrupted two-process run launched as SLURM launches it, shared by the workers."""

    def make(run_dir):
        pair = Pair(run_dir)
        results = [pair.finish(i) for i in range(2)]
        return {"dir": str(run_dir), "results": results}

    saved = once_per_session(tmp_path_factory, worker_id, "pair-run", make)
    return saved["dir"], saved["results"]


@pytest.mark.heavy
def test_slurm_tasks_find_each_other_and_each_takes_its_share_of_devices(pair_run):
    run_dir, results = pair_run
    for i, (status, out, err) in enumerate(results):
        assert status == 0, err[-2000:]
        assert f"process {i} of 2 (slurm): 4 of 8 cpu devices" in out
    assert "step 8 eval" in results[0][1]
    assert [r["step"] for r in monitor.read_metrics(run_dir) if "train/loss" in r] == [2, 4, 6, 8]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.heavy
def test_a_slurm_job_meets_every_fault_in_turn_and_ends_bitwise_as_an_uninterrupted_one(
    pair_run, tmp_path
):
    """In turn, each followed by the same command again:
    1. SLURM's warning signal (#SBATCH --signal=TERM@120): SIGTERM to every task; they agree on a
       step, save it and exit with 75 (the sbatch script requeues on it);
    2. process 1 killed mid-run: process 0 stops within the peer timeout, in one line naming it;
    3. process 1 frozen (its host stopped) as the run starts: process 0 waits at the checkpoints'
       first barrier until the watchdog stops it, every thread's stack in its log;
    4. process 0 killed mid-step: process 1 stops at once (the supervisor reads JAX's abort);
    5. nothing: the run ends as the uninterrupted one did, bit for bit."""
    reference, _ = pair_run
    bound = PEER_TIMEOUT + 15  # the watch's timeout, its polling, settle's margin

    pair = Pair(tmp_path)
    try:
        pair.until("step 2/8")
        for i in range(2):
            pair.signal(i, signal.SIGTERM)
        results = [pair.finish(i) for i in range(2)]
    finally:
        pair.kill()
    for status, _, err in results:
        assert status == FAULT_EXIT, err[-2000:]
    assert "stopping at step" in results[0][1]

    # "step N: compiled ...": the next steps' collectives need process 1
    status, out, err, took = Pair(tmp_path).fault("step ", 1, signal.SIGKILL, 0)
    assert "resumed from" in out
    assert status == FAULT_EXIT and took < bound, err[-3000:]
    assert last_line(err).startswith(
        f"error: process 1 of 2 stopped answering for {PEER_TIMEOUT} s (killed, frozen or its "
        "host lost); process 0 stops too."
    ), err[-3000:]
    assert "Check failure stack trace" not in err and "Fatal Python error" not in err

    pair = Pair(tmp_path, "--config.phase_timeout=6", "--config.peer_timeout=120")
    status, _, err, took = pair.fault("process 0 of 2 (slurm)", 1, signal.SIGSTOP, 0)
    assert status == FAULT_EXIT and took < 6 + 15, err[-3000:]
    assert "Thread 0x" in err and "most recent call first" in err  # every thread's stack
    assert re.match(r"error: .+ did not finish in 6 s \(the watchdog", last_line(err)), err

    status, _, err, took = Pair(tmp_path).fault("step ", 0, signal.SIGKILL, 1)
    assert status == FAULT_EXIT and took < bound, err[-3000:]
    assert last_line(err).startswith(
        "error: process 0, which holds JAX's coordination service, is gone"
    ), err[-3000:]
    assert "Check failure stack trace" not in err

    rerun = Pair(tmp_path)
    results = [rerun.finish(i) for i in range(2)]
    assert all(status == 0 for status, _, _ in results), results[0][2][-2000:]
    assert_same(params_of(tmp_path), params_of(reference))
    assert [r["step"] for r in monitor.read_metrics(tmp_path) if "train/loss" in r] == [2, 4, 6, 8]


def mount_tmpfs(where, size_kib: int) -> None:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()[:120]})")


@pytest.mark.heavy
def test_a_full_disk_fails_the_save_in_one_line_and_the_next_run_resumes(smoke_run):
    """The smoke run's checkpoints take about 2.4 MB each; a 3.5 MB disk holds step 4's, not step
    8's beside it."""
    run_dir, _, _ = smoke_run
    disk = tempfile.mkdtemp(prefix="hcnet-full-")
    mount_tmpfs(disk, 3500)
    try:
        workdir = os.path.join(disk, "run")
        proc = subprocess.run(
            train_cmd(workdir), env=env_with(8), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == FAULT_EXIT, proc.stderr[-3000:]
        line = last_line(proc.stderr)
        assert line.startswith(f"error: {workdir}: no space left on its disk (a checkpoint needs")
        assert "MiB are free); free some or point --workdir elsewhere" in line
        assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[0] == "4"
        subprocess.run(["mount", "-o", "remount,size=20m", disk], check=True)
        rerun = subprocess.run(
            train_cmd(workdir), env=env_with(8), capture_output=True, text=True, timeout=300
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"resumed from {workdir}/checkpoints/4" in rerun.stdout
        assert_same(params_of(workdir), params_of(run_dir))
    finally:
        subprocess.run(["umount", disk], check=False)
        shutil.rmtree(disk, ignore_errors=True)
