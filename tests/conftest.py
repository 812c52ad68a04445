"""Every test sees 8 fake CPU devices; set before jax is imported anywhere."""
import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8",
     "--xla_backend_optimization_level=0"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One compilation cache for this session's workers and the processes the tests start: training
# tests compile the same smoke program many times. Fresh per session, so timings stay honest.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hcnet-test-jax-cache-")
