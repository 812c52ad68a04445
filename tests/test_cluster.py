"""Launching on clusters, decided without one: the plan each process joins by (JAX's own
detection, the GPUs a process takes under SLURM and Open MPI), a gcloud-made TPU slice found
through a metadata server emulated on 127.0.0.1, the peer watch, the supervisor's reading of
JAX's abort, and the step watchdog."""

import http.server
import os
import subprocess
import sys
import threading
import time

import jax
import pytest
from jax._src.clusters import ClusterEnv, cloud_tpu_cluster

from hcnet import cluster, faults, supervise
from hcnet.errors import FAULT_EXIT, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULER_VARS = ("SLURM_", "OMPI_", "TPU_WORKER", "JAX_COORDINATOR", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def clean_env(monkeypatch):
    """No scheduler in this process's environment (JAX's detection reads os.environ)."""
    for name in list(os.environ):
        if name.startswith(SCHEDULER_VARS):
            monkeypatch.delenv(name)
    return monkeypatch


def slurm(ntasks: int, procid: int, per_node: str, node: int, localid: int) -> dict:
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "node[001-002]",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(node),
        "SLURM_STEP_TASKS_PER_NODE": per_node,
    }


def ompi(size: int, rank: int, local_size: int, local_rank: int) -> dict:
    return {
        "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911",
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank),
    }


# (launch, environment, visible GPUs, the plan's (source, processes, id, GPUs this process takes))
LAUNCHES = [
    ("SLURM, a process a node", slurm(2, 1, "1(x2)", 1, 0), 8, ("slurm", 2, 1, tuple(range(8)))),
    ("SLURM, a process a GPU", slurm(16, 11, "8(x2)", 1, 3), 8, ("slurm", 16, 11, (3,))),
    ("SLURM, --gpus-per-task=1", slurm(16, 11, "8(x2)", 1, 3), 1, ("slurm", 16, 11, (0,))),
    ("SLURM, two a node of 8", slurm(4, 3, "2(x2)", 1, 1), 8, ("slurm", 4, 3, (4, 5, 6, 7))),
    ("SLURM, CPU nodes", slurm(2, 0, "1(x2)", 0, 0), 0, ("slurm", 2, 0, None)),
    ("Open MPI, a process a node", ompi(2, 0, 1, 0), 8, ("ompi", 2, 0, tuple(range(8)))),
    ("Open MPI, a process a GPU", ompi(16, 9, 8, 1), 8, ("ompi", 16, 9, (1,))),
    ("SLURM, one task", slurm(1, 0, "1", 0, 0), 8, ("", 1, 0, None)),
    ("no scheduler", {}, 8, ("", 1, 0, None)),
]


@pytest.mark.parametrize("name,env,gpus,want", LAUNCHES, ids=[x[0] for x in LAUNCHES])
def test_each_launch_layout_gives_every_process_its_devices(clean_env, name, env, gpus, want):
    for k, v in env.items():
        clean_env.setenv(k, v)
    p = cluster.plan(gpus=gpus)
    assert (p.source, p.num_processes, p.process_id, p.local_device_ids) == want
    if "a process a node" in name:
        # what JAX alone would do there: the local rank's GPU, one of the node's eight
        _, _, _, ids = ClusterEnv.auto_detect_unset_distributed_params(
            None, None, None, None, None, 1
        )
        assert ids == [0]


def test_the_coordinator_flags_take_the_schedulers_layout_too(clean_env):
    for k, v in slurm(2, 1, "1(x2)", 1, 0).items():
        clean_env.setenv(k, v)
    p = cluster.plan(coordinator="h0:1234", num_processes=2, process_id=1, gpus=4)
    assert p == cluster.Plan("flags", 2, 1, (0, 1, 2, 3), "h0:1234")
    with pytest.raises(UserError, match=r"--process_id=2: one of 0..1"):
        cluster.plan(coordinator="h0:1234", num_processes=2, process_id=2, gpus=0)


@pytest.mark.parametrize(
    "env,gpus,message",
    [
        (slurm(6, 0, "3(x2)", 0, 0), 8, r"3 processes on this node and 8 GPUs"),
        (
            {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"},
            0,
            r"Open MPI started 4 processes but JAX cannot find their coordinator",
        ),
        ({"SLURM_NTASKS": "2"}, 0, r"SLURM started 2 processes but JAX cannot find"),
        (slurm(2, 0, "2(x", 0, 0), 0, r"SLURM tasks per node '2\(x'"),
    ],
)
def test_a_launch_that_cannot_work_is_one_line(clean_env, env, gpus, message):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(UserError, match=message):
        cluster.plan(gpus=gpus)


def test_slurm_tasks_per_node_and_visible_gpus():
    assert [cluster.tasks_per_node("8(x2),4", n) for n in range(3)] == [8, 8, 4]
    assert cluster.visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}) == 2
    assert cluster.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert cluster.visible_gpus({}, device_files="/nonexistent/nvidia*") == 0


class Metadata:
    """A Cloud TPU VM's metadata server on 127.0.0.1, as JAX's GceTpuCluster reads it."""

    def __init__(self, worker: int | None, workers: list[str], tpu_env: str = ""):
        attributes = {
            "worker-network-endpoints": ",".join(f"w{i}:id{i}:{a}" for i, a in enumerate(workers)),
            "tpu-env": tpu_env,
        }
        if worker is not None:  # a GKE node's metadata has no worker number
            attributes["agent-worker-number"] = str(worker)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                key = self.path.rsplit("/", 1)[-1]
                ok = self.headers.get("Metadata-Flavor") == "Google" and key in attributes
                body = attributes[key].encode() if ok else b"not found"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_gcloud_made_tpu_slice_and_a_gke_one_are_found_as_jax_finds_them(clean_env):
    gce = Metadata(1, ["10.0.0.2", "10.0.0.3"], "MEGASCALE_NUM_SLICES: '1'\n")
    gke = Metadata(None, [])
    try:
        clean_env.setenv("GCE_METADATA_IP", gce.address)
        clean_env.delenv("TPU_SKIP_MDS_QUERY", raising=False)  # JAX sets it where no TPU is
        clean_env.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
        assert cluster.plan(gpus=0) == cluster.Plan("gcetpu", 2, 1)
        clean_env.setenv("GCE_METADATA_IP", gke.address)
        clean_env.setenv("TPU_WORKER_HOSTNAMES", "h0,h1")
        clean_env.setenv("TPU_WORKER_ID", "0")
        assert cluster.plan(gpus=0) == cluster.Plan("gketpu", 2, 0)
    finally:
        gce.close()
        gke.close()


JOIN = """
import os, sys
import jax
from jax._src import distributed
from jax._src.clusters import cloud_tpu_cluster
os.environ.pop("TPU_SKIP_MDS_QUERY", None)
cloud_tpu_cluster.running_in_cloud_tpu_vm = True  # what JAX finds on a TPU VM's PCI bus
from hcnet import cluster
p = cluster.join(peer_timeout=20)
print("JOINED", p.source, jax.process_index(), jax.process_count(),
      distributed.global_state.client is not None, flush=True)
cluster.leave()
"""


@pytest.mark.heavy
def test_two_workers_of_a_gcloud_made_slice_start_jaxs_runtime_on_their_own(clean_env):
    """train.py, eval.py and bench join through cluster.join: two processes, each with its own
    metadata server saying which worker it is, start the distributed runtime with no flags."""
    servers = [Metadata(i, ["127.0.0.1", "127.0.0.1"]) for i in range(2)]
    port = str(cluster_port())
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", JOIN],
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_VARS)},
                    "GCE_METADATA_IP": m.address,
                    "JAX_COORDINATOR_PORT": port,
                    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                    "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for m in servers
        ]
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for m in servers:
            m.close()
    for i, (out, err) in enumerate(outs):
        assert f"JOINED gcetpu {i} 2 True" in out, err[-2000:]


def cluster_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_several_processes_without_the_runtime_stop_in_one_line(monkeypatch):
    from jax._src import distributed

    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setattr(distributed.global_state, "client", None)
    with pytest.raises(UserError, match=r"one of 4 but JAX's distributed runtime was not started"):
        cluster.check_joined()


class Store:
    """JAX's key-value store as PeerWatch uses it, in memory; `down` makes every call hang up."""

    def __init__(self):
        self.kv, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Socket closed")
        self.kv[key] = value

    def key_value_try_get(self, key):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Socket closed")
        if key not in self.kv:
            raise RuntimeError(f"NOT_FOUND: Config key {key} not found.")
        return self.kv[key]


@pytest.fixture
def stops(monkeypatch):
    """What cluster.stop_now would have ended the process with."""
    said = []
    monkeypatch.setattr(cluster, "stop_now", said.append)
    return said


def wait_for(said: list, seconds: float) -> float:
    start = time.monotonic()
    while not said and time.monotonic() - start < seconds:
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_peer_that_stops_counting_is_named_by_every_process(stops):
    store = Store()
    watches = [cluster.PeerWatch(i, 3, 0.4, client=store).start() for i in range(3)]
    time.sleep(0.5)
    assert not stops  # all alive
    watches[2]._stopped.set()  # process 2 dies: no more counts, no "done"
    took = wait_for(stops, 3)
    assert took < 0.4 + 3 * watches[0].period + 0.5
    time.sleep(3 * watches[0].period)  # the others read the posted loss too
    assert {s.split(" stopped")[0] for s in stops} == {"process 2 of 3"}
    assert len(stops) >= 2
    for w in watches:
        w._stopped.set()


def test_a_finished_peer_is_not_lost_and_an_unreachable_store_is(stops):
    store = Store()
    a, b = (cluster.PeerWatch(i, 2, 0.4, client=store).start() for i in range(2))
    time.sleep(0.3)
    b.stop()  # finished cleanly
    time.sleep(1.0)
    assert not stops
    store.down = True  # process 0, which holds the store, is gone
    wait_for(stops, 3)
    assert stops and stops[0].startswith("process 0, which holds JAX's coordination service")
    a._stopped.set()


def test_the_supervisor_reads_which_process_jaxs_abort_lost():
    assert supervise.lost(b"UNAVAILABLE: Task 3 heartbeat timeout. This").startswith(
        "process 3 stopped sending heartbeats"
    )
    assert supervise.lost(b'{grpc_message:"Socket closed"}').startswith("process 0, which holds")
    assert supervise.several_processes({}, ["train.py", "--coordinator=h:1"])
    assert supervise.several_processes({"SLURM_NTASKS": "2"}, ["train.py"])
    assert not supervise.several_processes({"SLURM_NTASKS": "1"}, ["train.py"]) or any(
        os.path.exists(d) for d in ("/dev/accel0", "/dev/vfio/0")
    )


WATCHDOG = """
import time
from hcnet import faults
w = faults.Watchdog(step_s=0, phase_s=1.0, poll_s=0.1)
w.phase("step 7 (compiling)")
time.sleep(30)
"""


def test_the_watchdog_dumps_every_stack_and_exits_75():
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", WATCHDOG],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == FAULT_EXIT and time.monotonic() - start < 20
    *dump, last = proc.stderr.strip().splitlines()
    assert "Thread 0x" in "\n".join(dump) and "time.sleep" not in last
    assert last.startswith("error: step 7 (compiling) did not finish in 1 s (the watchdog")


def test_the_watchdogs_step_budget_follows_the_measured_pace():
    w = faults.Watchdog(step_s=0, phase_s=0)  # phase 0: no thread
    assert w.step_budget() == 0  # before the pace is known: the phase budget
    w.pace = 0.5
    assert w.step_budget() == faults.STEP_TIMEOUT_MIN
    w.pace = 30.0
    assert w.step_budget() == faults.STEPS_OF_SLACK * 30.0
    assert faults.Watchdog(step_s=7, phase_s=0).step_budget() == 7
