"""Joining a run's other processes: JAX's distributed runtime, started the same way by train.py,
eval.py and hcnet.tools.bench, the devices each process takes, and a watch on the peers.

Who the peers are comes from JAX's own cluster detection (a Cloud TPU slice through GKE's
variables or the VM's metadata server, SLURM, Open MPI 4), or from --coordinator flags. Given a
local rank, JAX gives a GPU process only the GPU of that number; `local_devices` decides from how
many processes share the node instead: one process a node takes all of the node's GPUs, one a GPU
its own. `PeerWatch` stops every process in one line when one of them dies or freezes, before
JAX's own heartbeat check would abort them with a C++ dump (docs/reliability.md).
"""

import dataclasses
import glob
import os
import re
import sys
import threading
import time

from hcnet import hostenv
from hcnet.errors import FAULT_EXIT, UserError

SCHEDULER_SIZES = {"SLURM": "SLURM_NTASKS", "Open MPI": "OMPI_COMM_WORLD_SIZE"}
_DETECT = object()  # plan(): ask JAX which cluster this is
_watching: list = []  # this process's PeerWatch, once joined
AGAIN = (
    "The last complete checkpoint stands: start every process again with the same command to resume"
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins: `source` is JAX's name for the cluster (slurm, ompi, gcetpu,
    gketpu, ...), "flags", or "" for a run of one process."""

    source: str
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None  # None: JAX's default (all, or TPU's own)
    coordinator: str | None = None  # None: JAX's detection finds it


def tasks_per_node(spec: str, node: int) -> int:
    """The processes SLURM starts on node `node` of a step, from SLURM_STEP_TASKS_PER_NODE's form
    ('8(x2),4': two nodes of 8, then one of 4)."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise UserError(f"SLURM tasks per node {spec!r}: not SLURM's form, e.g. 8(x2),4")
        counts += [int(m[1])] * int(m[2] or 1)
    return counts[min(node, len(counts) - 1)]


def local_layout(environ) -> tuple[int, int] | None:
    """(this process's rank on its node, processes on the node) as the scheduler says, or None."""
    if "SLURM_LOCALID" in environ:
        spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
        size = tasks_per_node(spec, int(environ.get("SLURM_NODEID", 0))) if spec else 1
        return int(environ["SLURM_LOCALID"]), size
    if "OMPI_COMM_WORLD_LOCAL_RANK" in environ:
        return (
            int(environ["OMPI_COMM_WORLD_LOCAL_RANK"]),
            int(environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", 1)),
        )
    return None


def visible_gpus(environ, device_files: str = hostenv.NVIDIA_DEVICES) -> int:
    """The NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES's list, else the node's."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return len([d for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    return len(glob.glob(device_files))


def local_devices(rank: int, size: int, gpus: int) -> tuple[int, ...] | None:
    """The GPU numbers (among those visible) process `rank` of `size` on a node with `gpus` takes:
    all for one process a node, its own for one a GPU, an equal share between; None without GPUs
    (JAX then keeps its own choice)."""
    if gpus == 0:
        return None
    if size == 1:
        return tuple(range(gpus))
    if gpus == 1:  # the scheduler gave each process its own GPU (--gpus-per-task=1)
        return (0,)
    if gpus % size:
        raise UserError(
            f"{size} processes on this node and {gpus} GPUs: start one process a node or one a "
            "GPU (or a number that divides the GPUs)"
        )
    share = gpus // size
    return tuple(range(rank * share, (rank + 1) * share))


def detected():
    """The cluster JAX's jax.distributed.initialize() would find here (a ClusterEnv class), or
    None: the same detection, in the same order."""
    from jax._src import clusters

    return next(
        (
            env
            for env in clusters.ClusterEnv._cluster_types
            if not env.opt_in_only_method and env.is_env_present()
        ),
        None,
    )


def plan(
    environ=os.environ,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env=_DETECT,
    gpus: int | None = None,
) -> Plan:
    """How this process joins its peers; one line for a launch that cannot work."""
    layout = local_layout(environ)
    gpus = visible_gpus(environ) if gpus is None else gpus
    if coordinator:
        if num_processes is None or process_id is None:
            raise UserError(f"--coordinator={coordinator}: give --num_processes and --process_id")
        if not 0 <= process_id < num_processes:
            raise UserError(
                f"--process_id={process_id}: one of 0..{num_processes - 1} (--num_processes)"
            )
        ids = local_devices(*layout, gpus) if layout else None
        return Plan("flags", num_processes, process_id, ids, coordinator)
    env = detected() if env is _DETECT else env
    if env is None:
        for scheduler, var in SCHEDULER_SIZES.items():
            if environ.get(var, "1") not in ("", "1"):
                raise UserError(
                    f"{scheduler} started {environ[var]} processes but JAX cannot find their "
                    "coordinator here (under Open MPI 5 it knows none); give each process "
                    "--coordinator=HOST:PORT --num_processes=N --process_id=RANK"
                )
        return Plan("")
    count = env.get_process_count()
    if count == 1:
        return Plan("")
    tpu = env.name in ("gcetpu", "gketpu")
    ids = local_devices(*layout, gpus) if layout and not tpu else None
    return Plan(env.name, count, env.get_process_id(), ids)


def join(*, coordinator=None, num_processes=None, process_id=None, peer_timeout=60.0) -> Plan:
    """Starts JAX's distributed runtime as `plan` says (and the peer watch), or nothing for one
    process; then checks that a process among several has the runtime's client."""
    import jax

    if peer_timeout < 5:
        raise UserError(f"config.peer_timeout={peer_timeout!r}: seconds, at least 5")
    p = plan(coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    if p.num_processes > 1:
        jax.distributed.initialize(
            p.coordinator,
            p.num_processes,
            p.process_id,
            p.local_device_ids,
            # JAX's own check aborts with a C++ dump; it is the backstop behind PeerWatch
            heartbeat_timeout_seconds=int(2 * peer_timeout) + 10,
        )
        _watching.append(PeerWatch(p.process_id, p.num_processes, peer_timeout).start())
    check_joined()
    return p


def summary(p: Plan) -> str:
    """What this process joined, as every process of several prints it first."""
    import jax

    return (
        f"process {jax.process_index()} of {jax.process_count()} ({p.source}): "
        f"{jax.local_device_count()} of {jax.device_count()} {jax.devices()[0].platform} devices"
    )


def leave() -> None:
    """This process finished its work: its peers stop watching it (call before exiting)."""
    for watch in _watching:
        watch.stop()


def settle() -> None:
    """Before an unexpected error ends a process of several: if a peer was lost (a collective
    fails at once when a peer dies), wait for the peer watch to say so in its one line and exit;
    returns if no peer was lost within the watch's time."""
    for watch in _watching:
        deadline = time.monotonic() + watch.timeout + 3 * watch.period
        while time.monotonic() < deadline:
            time.sleep(0.2)  # the watch's own thread ends the process when it is sure


def check_joined() -> None:
    """One line where this process sees several processes but has no coordination client:
    barriers, preemption sync and multi-host checkpoints all need it."""
    import jax
    from jax._src import distributed

    if jax.process_count() > 1 and distributed.global_state.client is None:
        raise UserError(
            f"this process is one of {jax.process_count()} but JAX's distributed runtime was not "
            "started: on Cloud TPU run the same command on every worker (--worker=all); elsewhere "
            "give --coordinator, --num_processes and --process_id"
        )


def stop_now(line: str) -> None:
    """Ends this process at once with `line` as its last (the main thread may be stuck in a
    collective, and the threads of a failed save may still be printing)."""
    try:  # not stderr: another thread's half-written line would go out before this one
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # whatever other threads print now goes nowhere
    time.sleep(0.1)  # and a write already under way lands before the line
    os.write(stderr, f"error: {line}\n".encode())
    os._exit(FAULT_EXIT)


class PeerWatch:
    """Each process counts a key of its own up in JAX's key-value store every `period` seconds and
    watches the next process's key (a ring: two small requests a process, whatever the size of the
    pod). A count that stands still for `timeout` seconds is posted under LOST, which every process
    reads, and every process then stops in one line naming the lost one. A process that cannot
    reach the store, held by process 0, for `timeout` seconds stops too."""

    PREFIX = "hcnet/peers/"
    LOST = PREFIX + "lost"
    DONE = "done"

    def __init__(self, process_id: int, num_processes: int, timeout: float, client=None):
        from jax._src import distributed

        self.client = client or distributed.global_state.client
        self.me, self.n, self.timeout = process_id, num_processes, timeout
        self.period = min(5.0, timeout / 4)
        self.neighbour = (process_id + 1) % num_processes
        self._stopped = threading.Event()
        self._last_ok = time.monotonic()
        self._seen = (None, time.monotonic())  # the neighbour's count, and since when

    def start(self) -> "PeerWatch":
        threading.Thread(target=self._beat, name="hcnet-peer-beat", daemon=True).start()
        threading.Thread(target=self._judge, name="hcnet-peer-judge", daemon=True).start()
        return self

    def stop(self) -> None:
        """This process is done: its peers stop watching it."""
        if not self._stopped.is_set():
            self._stopped.set()
            try:
                self.client.key_value_set(f"{self.PREFIX}{self.me}", self.DONE, True)
            except Exception:  # the store is gone with process 0: nothing left to tell
                pass

    def _get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception as e:
            if "NOT_FOUND" in str(e):
                return None
            raise

    def _beat(self) -> None:
        count = 0
        while not self._stopped.wait(self.period):
            try:
                count += 1
                self.client.key_value_set(f"{self.PREFIX}{self.me}", str(count), True)
                lost = self._get(self.LOST)
                theirs = self._get(f"{self.PREFIX}{self.neighbour}")
            except Exception:  # unreachable: _judge says so once `timeout` has passed
                continue
            self._last_ok = time.monotonic()
            if lost:
                self._lost(lost)
            if theirs == self.DONE:
                continue
            if theirs != self._seen[0]:
                self._seen = (theirs, time.monotonic())
            elif time.monotonic() - self._seen[1] > self.timeout:
                what = f"process {self.neighbour} of {self.n}"
                try:
                    self.client.key_value_set(self.LOST, what, True)
                except Exception:
                    pass
                self._lost(what)

    def _judge(self) -> None:
        while not self._stopped.wait(1.0):
            if time.monotonic() - self._last_ok > self.timeout:
                self._lost("process 0, which holds JAX's coordination service,")

    def _lost(self, what: str) -> None:
        if self._stopped.is_set():
            return
        stop_now(
            f"{what} stopped answering for {self.timeout:.0f} s (killed, frozen or its host "
            f"lost); process {self.me} stops too. {AGAIN}"
        )
