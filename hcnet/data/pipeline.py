"""grain pipelines over a Source, and the loader that hands global batches to the devices.

Order: the whole split is shuffled by the seed (a new permutation each epoch), each example gets its
own crop randomness from (seed, position), and global batch k holds positions [k*B, (k+1)*B). Each
host reads only its rows of each global batch (contiguous, in the mesh's device order), so the
examples, their crops and their place in the global batch are the same whatever the number of hosts.
The iterator state is one integer per host pipeline (`{"next_index": n}`), saved with checkpoints.

A transform (hcnet.data.transforms, or a task's own) maps a record, with its `index` in the split,
to one example: a dict of arrays with at least `mask` (False for an example to leave out).
Evaluation transforms also get the padding records `{"index": -1}` that fill the last batch.
"""

import collections
import math

import grain
import jax
import numpy as np

from hcnet.data.sources import Source
from hcnet.data.transforms import PAD_INDEX


class _Indexed:
    """Records with their index in the split (for logs, masks and exact evaluation); -1 past the
    end."""

    def __init__(self, records, padded_len: int | None = None):
        self.records, self.n = records, len(records)
        self.padded_len = self.n if padded_len is None else padded_len

    def __len__(self):
        return self.padded_len

    def __getitem__(self, i):
        i = int(i)
        if i >= self.n:
            return {"index": PAD_INDEX}
        return {**self.records[i], "index": i}


class HostRows(grain.MapDataset):
    """Rows [row0, row0 + rows) of every consecutive block of `global_batch` elements of the
    parent."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, row0: int, rows: int):
        super().__init__(parent)
        self._b, self._row0, self._rows = global_batch, row0, rows
        self._len = len(parent) // global_batch * rows

    def __len__(self):
        return self._len

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        k, j = divmod(int(i), self._rows)
        return self._parent[k * self._b + self._row0 + j]

    def __str__(self):
        return f"HostRows(global_batch={self._b}, rows=[{self._row0}, {self._row0 + self._rows}))"


def host_rows(sharding: jax.sharding.Sharding, global_batch: int) -> tuple:
    """(first row, rows) of the global batch that this process's devices hold under `sharding`."""
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    starts = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
    row0, row1 = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != row1 - row0:
        raise ValueError(
            "this process's devices do not hold one contiguous block of the batch; "
            "order the mesh's devices by process (jax.make_mesh does)"
        )
    return row0, row1 - row0


def _read_options(threads: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 8))


def _finish(ds: grain.MapDataset, rows: int, threads: int, workers: int) -> grain.IterDataset:
    # batch before the iter stage: each element is a whole host batch, so worker processes
    # (mp_prefetch) and threads change how fast batches come, never what is in them
    it = ds.batch(rows, drop_remainder=True).to_iter_dataset(_read_options(threads))
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it


def train_dataset(
    source: Source,
    transform,
    *,
    global_batch: int,
    row0: int,
    rows: int,
    seed: int,
    threads: int = 8,
    workers: int = 0,
) -> grain.IterDataset:
    """Endless shuffled training batches of this host's `rows` rows of each global batch;
    `transform(record, rng)` makes each example (a grain random map)."""
    ds = grain.MapDataset.source(_Indexed(source.records)).seed(seed)
    ds = ds.shuffle().repeat(None).random_map(transform)
    return _finish(HostRows(ds, global_batch, row0, rows), rows, threads, workers)


def eval_batches(num_examples: int, global_batch: int) -> int:
    return math.ceil(num_examples / global_batch)


def eval_dataset(
    source: Source,
    transform,
    *,
    global_batch: int,
    row0: int,
    rows: int,
    threads: int = 8,
    workers: int = 0,
) -> grain.IterDataset:
    """One pass over the split in order, padded to whole global batches; `transform(record)` makes
    each example, padding included."""
    padded = eval_batches(len(source), global_batch) * global_batch
    ds = grain.MapDataset.source(_Indexed(source.records, padded)).map(transform)
    return _finish(HostRows(ds, global_batch, row0, rows), rows, threads, workers)


class Loader:
    """Global batches as jax.Arrays sharded over the mesh, `prefetch` batches ahead on the devices.

    `get_state()` is the grain state after the last batch this loader returned (not after what it
    prefetched), so a checkpoint taken between steps resumes with exactly the next batch.
    """

    def __init__(
        self,
        dataset: grain.IterDataset,
        sharding: jax.sharding.Sharding,
        global_batch: int,
        prefetch: int = 2,
        state: dict | None = None,
    ):
        self._dataset, self._sharding, self._global_batch = dataset, sharding, global_batch
        self._prefetch = prefetch
        self._iter = iter(dataset)
        if state is not None:
            self._iter.set_state(state)
        self._state = self._iter.get_state()
        self._queue = collections.deque()

    def _put(self, local: dict) -> dict:
        def one(x):
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(
                self._sharding, x, (self._global_batch, *x.shape[1:])
            )

        return {k: one(v) for k, v in local.items()}

    def _fill(self):
        while len(self._queue) < max(self._prefetch, 1):
            try:
                local = next(self._iter)
            except StopIteration:
                return
            self._queue.append((self._put(local), self._iter.get_state()))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self._fill()
        if not self._queue:
            raise StopIteration
        batch, self._state = self._queue.popleft()
        self._fill()
        return batch

    def get_state(self) -> dict:
        return self._state


def train_loader(
    source: Source,
    sharding,
    global_batch: int,
    transform,
    *,
    seed: int,
    state: dict | None = None,
    prefetch: int = 2,
    threads: int = 8,
    workers: int = 0,
) -> Loader:
    """Loader of train_dataset for this process's rows under `sharding`."""
    row0, rows = host_rows(sharding, global_batch)
    ds = train_dataset(
        source,
        transform,
        global_batch=global_batch,
        row0=row0,
        rows=rows,
        seed=seed,
        threads=threads,
        workers=workers,
    )
    return Loader(ds, sharding, global_batch, prefetch, state)


def eval_loader(
    source: Source,
    sharding,
    global_batch: int,
    transform,
    *,
    prefetch: int = 2,
    threads: int = 8,
    workers: int = 0,
) -> Loader:
    """Loader of eval_dataset (one exact pass) for this process's rows under `sharding`."""
    row0, rows = host_rows(sharding, global_batch)
    ds = eval_dataset(
        source,
        transform,
        global_batch=global_batch,
        row0=row0,
        rows=rows,
        threads=threads,
        workers=workers,
    )
    return Loader(ds, sharding, global_batch, prefetch)


def loader_options(dataset) -> dict:
    """A config's dataset section as the loaders' keyword arguments (threads, workers, prefetch)."""
    return {"threads": dataset.threads, "workers": dataset.workers, "prefetch": dataset.prefetch}


def batch_shapes(global_batch: int, **fields) -> dict:
    """The abstract global batch a loader yields: `fields` (name=(per-example shape, dtype)) and the
    loader's own `mask` and `index`, as jax.ShapeDtypeStruct."""
    fields = {**fields, "mask": ((), np.bool_), "index": ((), np.int32)}
    return {
        k: jax.ShapeDtypeStruct((global_batch, *shape), dtype)
        for k, (shape, dtype) in fields.items()
    }
