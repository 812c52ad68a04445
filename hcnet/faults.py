"""What a long run does when the machines fail it: a watchdog for a step that never ends, and
the one line a full disk or a failing bucket ends the run with (docs/reliability.md).

A lost peer is hcnet.cluster's; Cloud Storage's retries are hcnet.paths'.
"""

import errno
import faulthandler
import math
import os
import shutil
import sys
import threading
import time

from hcnet import cluster, paths
from hcnet.errors import FaultError, described

# the clients whose errors are Cloud Storage failing (a frame of theirs in the traceback)
STORAGE_CLIENTS = (
    "gcsfs",
    "fsspec",
    "aiohttp",
    "google/cloud/storage",
    "google/api_core",
    "tensorstore",
    "orbax/checkpoint",
    "etils/epath",
)
STEP_TIMEOUT_MIN = 120.0  # an automatic step timeout is never shorter (an epoch's first batch)
STEPS_OF_SLACK = 20  # ... and otherwise this many steps at the measured pace


class Watchdog:
    """Stops a process whose training makes no progress: every thread's Python stack to stderr
    (faulthandler), one line, exit status 75, so that a scheduler restarts the run (which resumes)
    instead of billing a hang.

    Each wait has its budget: `phase_s` for compiling, evaluating and saving (and steps until the
    pace is known), `step_s` for a step (0: the larger of STEP_TIMEOUT_MIN and STEPS_OF_SLACK steps
    at the measured pace). `phase_s` 0 turns it off."""

    def __init__(self, step_s: float, phase_s: float, *, poll_s: float = 1.0):
        self.step_s, self.phase_s, self.pace = step_s, phase_s, None
        self._deadline, self._what, self._budget = math.inf, "", 0.0
        self._done = threading.Event()
        if phase_s > 0:
            threading.Thread(
                target=self._watch, args=(poll_s,), name="hcnet-watchdog", daemon=True
            ).start()

    def step_budget(self) -> float:
        if self.step_s:
            return self.step_s
        if self.pace is None:
            return self.phase_s
        return max(STEP_TIMEOUT_MIN, STEPS_OF_SLACK * self.pace)

    def expect(self, what: str, budget_s: float) -> None:
        """The next thing to finish is `what`, within `budget_s` from now."""
        self._what, self._budget = what, budget_s
        self._deadline = time.monotonic() + budget_s

    def step(self, n: int) -> None:
        self.expect(f"step {n}", self.step_budget())

    def phase(self, what: str) -> None:
        self.expect(what, self.phase_s)

    def close(self) -> None:
        self._done.set()

    def _watch(self, poll_s: float) -> None:
        while not self._done.wait(poll_s):
            if time.monotonic() > self._deadline:
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                cluster.stop_now(
                    f"{self._what} did not finish in {self._budget:.0f} s (the watchdog: "
                    "config.step_timeout, config.phase_timeout); every thread's stack is above. "
                    "The last complete checkpoint stands: the same command resumes"
                )


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _no_space(e: BaseException) -> bool:
    return any(
        getattr(x, "errno", None) == errno.ENOSPC
        or "No space left on device" in str(x)
        or "os_error_code='28'" in str(x)
        for x in _chain(e)
    )


def _from_storage(e: BaseException) -> bool:
    for x in _chain(e):
        tb = x.__traceback__
        while tb is not None:
            file = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
            if any(f"/{client}/" in file for client in STORAGE_CLIENTS):
                return True
            tb = tb.tb_next
    return False


def explain(e: BaseException, workdir, checkpoint_bytes: int) -> FaultError | None:
    """The one line for a run stopped by a full disk or by Cloud Storage, or None for any other
    error."""
    if _no_space(e):
        where = os.fspath(workdir)
        free = shutil.disk_usage(where).free if os.path.exists(where) else 0
        return FaultError(
            f"{where}: no space left on its disk (a checkpoint needs about "
            f"{checkpoint_bytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free); free some or "
            "point --workdir elsewhere, then run the same command: it resumes from the last "
            "complete checkpoint"
        )
    if paths.is_remote(workdir) and _from_storage(e):
        return FaultError(
            f"{workdir}: Cloud Storage failed ({described(e)}); the last complete checkpoint "
            "stands: run the same command again once the bucket answers"
        )
    return None
