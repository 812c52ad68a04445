"""Where arrays live: the (data, fsdp) mesh, the batch sharding and the parameter rule.

Batches split over every device (both axes). Parameters and optimizer state are replicated,
except, when the mesh has an fsdp axis larger than 1, arrays of at least `fsdp_min_size`
elements, which are split over fsdp along their largest dimension that it divides.
"""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from hcnet.errors import ConfigError

DATA, FSDP = "data", "fsdp"


def check_mesh(data: int, fsdp: int, num_devices: int) -> int:
    """The data axis size (data=-1 takes what fsdp leaves); one line if (data, fsdp) cannot cover
    the devices."""
    if fsdp < 1 or num_devices % fsdp:
        raise ConfigError(f"mesh.fsdp={fsdp}: a positive divisor of the {num_devices} devices")
    size = num_devices // fsdp if data == -1 else data
    if size < 1 or size * fsdp != num_devices:
        raise ConfigError(
            f"mesh.data={data}: data x fsdp must equal the {num_devices} devices "
            "(-1 fills in the rest)"
        )
    return size


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp) mesh over `devices` (all by default); data=-1 takes what fsdp leaves."""
    devices = list(devices if devices is not None else jax.devices())
    data = check_mesh(data, fsdp, len(devices))
    return jax.make_mesh(
        (data, fsdp), (DATA, FSDP), (AxisType.Auto, AxisType.Auto), devices=devices
    )


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P((DATA, FSDP)))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicated_key(seed: int, mesh) -> jax.Array:
    """A PRNG key replicated over the mesh, on any number of processes (device_put needs addressable
    devices)."""
    return jax.jit(lambda: jax.random.key(seed), out_shardings=replicated(mesh))()


def param_sharding(mesh, shape, fsdp_min_size: int = 2**18) -> NamedSharding:
    """The rule for one array: replicated, or split over fsdp along its largest divisible
    dimension."""
    ways = mesh.shape[FSDP]
    if ways == 1 or int(np.prod(shape)) < fsdp_min_size:
        return replicated(mesh)
    dims = sorted((d for d in range(len(shape)) if shape[d] % ways == 0), key=lambda d: -shape[d])
    if not dims:
        return replicated(mesh)
    spec = [None] * len(shape)
    spec[dims[0]] = FSDP
    return NamedSharding(mesh, P(*spec))


def state_shardings(mesh, abstract_state, fsdp_min_size: int = 2**18):
    """param_sharding for every array leaf of a (possibly abstract) state pytree."""
    return jax.tree.map(lambda x: param_sharding(mesh, np.shape(x), fsdp_min_size), abstract_state)


def placed(shapes, shardings):
    """Abstract arrays of `shapes` (a pytree) with `shardings`: one sharding for every leaf, or a
    pytree of them; what a checkpoint is restored onto and what a program is lowered for."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, shapes)

    def place(a, s):
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    return jax.tree.map(place, shapes, shardings)


def nbytes(tree) -> int:
    """The bytes of a (possibly abstract) pytree's arrays, all of each: what a checkpoint of it
    holds."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def to_host(tree):
    """Replicated device values (and pytrees of them, e.g. clu metrics) as numpy, on any number of
    processes."""
    return jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree
    )


_entered: set = set()


def enter_together(jitted, *args, name: str, timeout_s: int = 3600) -> None:
    """On several processes, compiles `jitted` for `args` and then waits until every process has
    done so.

    CPU collectives (gloo) set up their connections at the first collective a program runs, and give
    a late peer 30 s; compiling takes longer than that and not equally long on every process (a busy
    host, a slower one), so the first call of a program waits here, at a barrier of JAX's
    coordination service, which is not a collective. The compiled program stays in `jitted`'s cache
    for the call that follows. Once per `name`; on one process it does nothing.
    """
    if jax.process_count() == 1 or name in _entered:
        return
    jitted.lower(*args).compile()
    from jax._src import distributed  # the coordination service's client; JAX has no public barrier

    distributed.global_state.client.wait_at_barrier(
        f"hcnet-compiled-{name}", timeout_in_ms=timeout_s * 1000
    )
    _entered.add(name)
