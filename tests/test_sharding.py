"""The mesh, the batch sharding and the parameter rule, on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from hcnet.sharding import FSDP, batch_sharding, make_mesh, param_sharding, state_shardings


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "data, fsdp, shape", [(-1, 1, (8, 1)), (-1, 2, (4, 2)), (2, 4, (2, 4)), (1, 8, (1, 8))]
)
def test_mesh_shapes(data, fsdp, shape):
    mesh = make_mesh(data, fsdp)
    assert tuple(mesh.shape.values()) == shape and mesh.axis_names == ("data", "fsdp")


@pytest.mark.parametrize(
    "data, fsdp, message",
    [
        (3, 1, "mesh.data=3: data x fsdp must equal the 8 devices"),
        (-1, 3, "mesh.fsdp=3: a positive divisor of the 8 devices"),
    ],
)
def test_bad_meshes_stop_with_one_line(data, fsdp, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        make_mesh(data, fsdp)


def test_batches_split_over_every_device():
    x = jax.device_put(jnp.arange(16.0 * 3).reshape(16, 3), batch_sharding(make_mesh(-1, 2)))
    assert len({s.device for s in x.addressable_shards}) == 8
    assert all(s.data.shape == (2, 3) for s in x.addressable_shards)


def test_parameter_rule_replicates_by_default_and_shards_large_arrays_over_fsdp():
    params = {
        "kernel": jnp.zeros((512, 2048)),
        "bias": jnp.zeros(2048),
        "odd": jnp.zeros((1023, 1025)),
    }
    replicated = state_shardings(make_mesh(-1, 1), params)
    assert all(s.spec == P() for s in jax.tree.leaves(replicated))
    sharded = state_shardings(make_mesh(-1, 4), params)
    assert sharded["kernel"].spec == P(None, FSDP) and sharded["bias"].spec == P()
    assert sharded["odd"].spec == P()  # no dimension divisible by 4
    assert param_sharding(make_mesh(-1, 4), (3, 3, 1, 1024), fsdp_min_size=1).spec == P(
        None, None, None, FSDP
    )


def test_sharded_matmul_gives_the_unsharded_result():
    mesh = make_mesh(-1, 2)
    w = jax.random.normal(jax.random.key(0), (64, 4096))
    x = jax.random.normal(jax.random.key(1), (16, 64))
    ws = jax.device_put(w, param_sharding(mesh, w.shape, fsdp_min_size=1))
    xs = jax.device_put(x, batch_sharding(mesh))
    y = jax.jit(jnp.dot, out_shardings=batch_sharding(mesh))(xs, ws)
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)


MEET = """
import sys, time
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from hcnet import sharding
pid, late = int(sys.argv[1]), float(sys.argv[3])
jax.distributed.initialize(sys.argv[2], 2, pid)
mesh = jax.make_mesh((4,), ("d",))
x = jax.make_array_from_callback((4,), NamedSharding(mesh, P("d")), lambda i: jnp.ones((1,)))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
# process 1 reaches the program late (compiling longer, a busy host)
time.sleep(late if pid == 1 else 0)
t = time.monotonic()
sharding.enter_together(total, x, name="sum")
waited = time.monotonic() - t
print("RESULT", waited, float(total(x).addressable_data(0)), flush=True)
"""


def test_processes_compile_then_meet_before_a_programs_first_collective():
    """enter_together: the early process waits at the coordination service's barrier for the late
    one (which, reaching gloo's first collective more than 30 s late, made the early one fail;
    reproduced by hand with a 45 s delay), and the call that follows runs the compiled program."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MEET, str(i), address, "4"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        results.append(
            [
                float(v)
                for v in next(ln for ln in out.splitlines() if ln.startswith("RESULT")).split()[1:]
            ]
        )
    assert (
        results[0][0] > 3.0 and results[1][0] < results[0][0]
    )  # process 0 waited for process 1's 4 s
    assert results[0][1] == results[1][1] == 4.0
