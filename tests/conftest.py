"""Every test sees 8 fake CPU devices and, for gs:// paths, a local Cloud Storage emulator
(tests/gcs.py); both set before jax or any storage client is imported anywhere."""

import os
import sys
import tempfile

import gcs

# Compile time is most of this suite's time: optimisation level 0, and XLA:CPU's older elemental
# emitters rather than its fusion emitters (the smoke train step compiled in 16 s instead of 25 s on
# a 2-core AMD EPYC).
os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
        "--xla_cpu_use_fusion_emitters=false",
    ]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# test workers compiling for TPU share libtpu (no lock)
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# JAX's CUDA plugin (requirements-gpu.txt) checks for a GPU when JAX starts; the tests compiling for
# a described GPU need none (tests/test_aot.py)
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
# what hcnet.hostenv would restart train.py and eval.py with; set here, their subprocesses start
# once
from hcnet import hostenv  # noqa: E402  (imports no JAX)

os.environ.update(hostenv.cpu_malloc_env(os.environ) or {})

# One compilation cache for this session's workers and the processes the tests start: training
# tests compile the same smoke program many times. Fresh per session, so timings stay honest.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hcnet-test-jax-cache-")
    # the small programs too (JAX keeps only those that took a second by default): a cached train.py
    # smoke run went from 25 s to 21.5 s
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# Cloud Storage: each pytest process (xdist worker) has its own emulator port, started on first use;
# the processes the tests start inherit the settings and the offline guard (a PYTHONPATH entry).
GCS_PORT = gcs.free_port()
os.environ.update(gcs.environment(GCS_PORT, closed_port=gcs.free_port()))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (gcs.OFFLINE, os.environ.get("PYTHONPATH")) if p
)
sys.path.insert(0, gcs.OFFLINE)
import fcntl  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402
import sitecustomize  # noqa: E402,F401  (the offline guard, in this process too)


def once_per_session(tmp_path_factory, worker_id, name: str, make) -> dict:
    """`make(directory)` (a JSON-able dict) run once per session, shared by the xdist workers: the
    first worker to ask runs it in <basetemp>/<name>, the others wait for it and read its result."""
    shared = (
        tmp_path_factory.getbasetemp()
        if worker_id == "master"
        else tmp_path_factory.getbasetemp().parent
    )
    done = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            done.write_text(json.dumps(make(shared / name)))
    return json.loads(done.read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, worker_id):
    """One uninterrupted smoke run per session, shared by the xdist workers: (workdir, metrics,
    console)."""

    def make(run_dir):
        # in a process of its own: it traces steps 2-4 with jax.profiler, which crashes in a process
        # that has loaded libtpu 0.0.52 (tests/test_aot.py's workers do)
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[2]); from runs import smoke; "
            "from hcnet import checkpoint, trainer; checkpoint.configure_orbax(); "
            "r = trainer.train_and_evaluate(smoke(profile_steps=(2, 4)), sys.argv[1]); "
            "print('SMOKE-RESULT ' + json.dumps(r))"
        )
        root = pathlib.Path(__file__).resolve().parent
        proc = subprocess.run(
            [sys.executable, "-c", code, str(run_dir), str(root)],
            cwd=root.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        console, _, result = proc.stdout.rpartition("SMOKE-RESULT ")
        return {"result": json.loads(result), "console": console, "dir": str(run_dir)}

    saved = once_per_session(tmp_path_factory, worker_id, "smoke-run", make)
    return pathlib.Path(saved["dir"]), saved["result"], saved["console"]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """This process's Cloud Storage emulator (gcs.Emulator), stopped at the end of the session."""
    emulator = gcs.Emulator(GCS_PORT, str(tmp_path_factory.getbasetemp() / "fake-gcs-server.log"))
    yield emulator
    emulator.stop()


@pytest.fixture
def bucket(gcs_emulator):
    """A new, empty bucket on the emulator: 'gs://NAME'."""
    return gcs_emulator.bucket(f"hcnet-{uuid.uuid4().hex[:12]}")


# The longest tests (marked heavy) first, so neither worker is left with one at the end; the first
# test that needs the smoke run goes first of all, so it trains while the other worker takes tests
# that do not need it.
def pytest_collection_modifyitems(config, items):
    def heavy_first(group):
        return sorted(group, key=lambda item: item.get_closest_marker("heavy") is None)  # stable

    smoke = [item for item in items if "smoke_run" in getattr(item, "fixturenames", ())]
    rest = [item for item in items if "smoke_run" not in getattr(item, "fixturenames", ())]
    items[:] = smoke[:1] + heavy_first(rest) + heavy_first(smoke[1:])
