"""A command of several processes runs as a child of a thin parent that reads its stderr.

When process 0, which holds JAX's coordination service, dies, every other process's coordination
client aborts at once in C++ (a check failure, a stack dump, SIGABRT) before Python can act, and
JAX offers no way to replace that from Python in the pinned version (docs/reliability.md). The
parent passes the child's stderr through line by line; from the line of that abort on it holds
the dump back, and if the child then dies of SIGABRT it says what happened in one line and exits
with status 75, as every other fault of a run does. Signals to the parent go on to the child;
the child dies with the parent. Standard output is the child's own, untouched.
"""

import glob
import os
import re
import signal
import subprocess
import sys

from hcnet import hostenv
from hcnet.cluster import AGAIN
from hcnet.errors import FAULT_EXIT

CHILD = "HCNET_SUPERVISED"  # set in the child: it runs the command itself
ABORT = b"Terminating process because the JAX distributed service detected fatal errors"
# the lines that open that abort: held back from the first of them
OPENING = (b"Polled an error from coordination service", ABORT)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def several_processes(environ, argv) -> bool:
    """Whether this launch may start several processes (judged without importing JAX): the
    --coordinator flag, SLURM or Open MPI with more than one task, or a Cloud TPU VM."""
    return (
        any(a.startswith("--coordinator") for a in argv)
        or environ.get("SLURM_NTASKS", "1") not in ("", "1")
        or environ.get("OMPI_COMM_WORLD_SIZE", "1") not in ("", "1")
        or "," in environ.get("TPU_WORKER_HOSTNAMES", "")
        or any(glob.glob(pattern) for pattern in hostenv.TPU_DEVICES)
    )


def lost(dump: bytes) -> str:
    """Which process the held-back abort says was lost, as words."""
    m = re.search(rb"Task (\d+) heartbeat timeout", dump)
    if m:
        return f"process {int(m[1])} stopped sending heartbeats (killed, frozen or its host lost)"
    return "process 0, which holds JAX's coordination service, is gone (killed or its host lost)"


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_in_child() -> None:
    """Where several processes may run and this is not the child yet: runs the same command as
    a child, passes its stderr on, and exits with its status (75 and one line for the abort
    above). Returns at once otherwise."""
    if os.environ.get(CHILD) or not several_processes(os.environ, sys.argv):
        return
    child = subprocess.Popen(
        [sys.executable, *sys.orig_argv[1:]],
        env={**os.environ, CHILD: "1"},
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _: child.send_signal(s))
    held, out = [], sys.stderr.buffer
    for line in child.stderr:
        if held or any(o in line for o in OPENING):
            held.append(line)
            continue
        out.write(line)
        out.flush()
    status = child.wait()
    if held and status == -signal.SIGABRT:
        sys.stdout.flush()
        line = f"error: {lost(b''.join(held))}; this process stops too. {AGAIN}\n"
        out.write(line.encode())
        out.flush()
        os._exit(FAULT_EXIT)
    out.write(b"".join(held))
    out.flush()
    os._exit(status if status >= 0 else 128 - status)
