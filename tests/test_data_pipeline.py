"""grain loading: order fixed by the seed, resumable state, host independence, exact evaluation."""

import images
import jax
import numpy as np
import pytest

from hcnet import sharding
from hcnet.data import pipeline, sources, transforms


def photo_source(n: int, bad_at=()) -> sources.Source:
    """n small JPEG records (labels i % 5); positions in bad_at hold a zero-byte file."""
    photos = [images.encode(images.photo(p, (40, 32))) for p in images.PHOTOS]
    records = [
        {"image": b"" if i in bad_at else photos[i % len(photos)], "label": i % 5} for i in range(n)
    ]
    return sources.Source(records, "photos", "train", 5)


TRAIN16, EVAL16 = transforms.TrainTransform(16), transforms.EvalTransform(16)


def local_batches(ds, count):
    it = iter(ds)
    return [next(it) for _ in range(count)]


def test_train_order_is_fixed_by_the_seed_and_each_epoch_is_a_permutation():
    src = photo_source(12)
    kw = dict(global_batch=4, row0=0, rows=4, threads=2)
    a = local_batches(pipeline.train_dataset(src, TRAIN16, seed=1, **kw), 6)
    b = local_batches(pipeline.train_dataset(src, TRAIN16, seed=1, **kw), 6)
    c = local_batches(pipeline.train_dataset(src, TRAIN16, seed=2, **kw), 3)
    index = np.concatenate([x["index"] for x in a])
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not np.array_equal(index[:12], np.concatenate([x["index"] for x in c]))
    assert sorted(index[:12]) == list(range(12)) and sorted(index[12:]) == list(range(12))
    assert not np.array_equal(index[:12], index[12:])  # a new permutation each epoch


def test_hosts_read_disjoint_rows_and_together_make_the_one_host_batch():
    src = photo_source(20)
    kw = dict(global_batch=8, seed=3, threads=2)
    one = local_batches(pipeline.train_dataset(src, TRAIN16, row0=0, rows=8, **kw), 3)
    for hosts in (2, 4):
        parts = [
            local_batches(
                pipeline.train_dataset(src, TRAIN16, row0=h * 8 // hosts, rows=8 // hosts, **kw), 3
            )
            for h in range(hosts)
        ]
        for k in range(3):
            joined = {f: np.concatenate([p[k][f] for p in parts]) for f in one[k]}
            assert all(np.array_equal(joined[f], one[k][f]) for f in joined)


def test_a_bad_example_is_masked_and_shifts_nothing_else():
    kw = dict(global_batch=4, row0=0, rows=4, seed=0, threads=2)
    good = local_batches(pipeline.train_dataset(photo_source(12), TRAIN16, **kw), 3)
    bad = local_batches(pipeline.train_dataset(photo_source(12, bad_at={5}), TRAIN16, **kw), 3)
    for g, b in zip(good, bad):
        np.testing.assert_array_equal(g["index"], b["index"])
        hit = b["index"] == 5
        assert not b["mask"][hit].any() and b["mask"][~hit].all() and not b["image"][hit].any()
        np.testing.assert_array_equal(g["image"][~hit], b["image"][~hit])


def test_loader_gives_sharded_global_arrays_and_resumes_from_its_state():
    mesh = sharding.make_mesh()
    s = sharding.batch_sharding(mesh)
    src = photo_source(30)
    loader = pipeline.train_loader(src, s, 16, TRAIN16, seed=5, threads=2, prefetch=3)
    first = next(loader)
    assert first["image"].shape == (16, 16, 16, 3) and first["image"].sharding.is_equivalent_to(
        s, 4
    )
    assert (
        len(first["image"].addressable_shards) == 8
        and first["image"].addressable_shards[0].data.shape[0] == 2
    )
    state = loader.get_state()
    assert state == {"next_index": 1}  # batches returned, not batches prefetched
    rest = [next(loader) for _ in range(3)]
    resumed = pipeline.train_loader(src, s, 16, TRAIN16, seed=5, threads=2, state=state)
    for want in rest:
        got = next(resumed)
        assert all(np.array_equal(np.asarray(want[k]), np.asarray(got[k])) for k in want)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_evaluation_counts_every_example_exactly_once(devices):
    src = photo_source(37, bad_at={7})
    mesh = sharding.make_mesh(devices=jax.devices()[:devices])
    s = sharding.batch_sharding(mesh)
    global_batch = 3 * devices
    seen, valid, padding = [], 0, 0
    for batch in pipeline.eval_loader(src, s, global_batch, EVAL16, threads=2):
        index, mask = np.asarray(batch["index"]), np.asarray(batch["mask"])
        seen += index[index >= 0].tolist()
        valid += int(mask.sum())
        padding += int((index == transforms.PAD_INDEX).sum())
        assert not mask[index < 0].any()
    assert sorted(seen) == list(range(37)) and valid == 36
    assert padding == pipeline.eval_batches(37, global_batch) * global_batch - 37


@pytest.mark.parametrize("hosts", [2, 4])
def test_evaluation_over_hosts_covers_the_split_once(hosts):
    src = photo_source(37)
    global_batch = 8
    seen = []
    for h in range(hosts):
        rows = global_batch // hosts
        ds = pipeline.eval_dataset(src, EVAL16, global_batch=global_batch, row0=h * rows, rows=rows)
        batches = list(ds)
        assert len(batches) == pipeline.eval_batches(
            37, global_batch
        )  # every host steps the same count
        seen += [i for b in batches for i in b["index"].tolist() if i >= 0]
    assert sorted(seen) == list(range(37))


def test_host_rows_follow_the_sharding():
    mesh = sharding.make_mesh(data=4, fsdp=2)
    assert pipeline.host_rows(sharding.batch_sharding(mesh), 32) == (
        0,
        32,
    )  # one process holds all rows


def test_worker_processes_change_speed_not_content():
    from absl import flags

    if (
        not flags.FLAGS.is_parsed()
    ):  # grain's workers read absl flags; train.py parses them in main()
        flags.FLAGS.mark_as_parsed()
    src = photo_source(24)
    kw = dict(global_batch=4, row0=0, rows=4, seed=9, threads=1)
    want = local_batches(pipeline.train_dataset(src, TRAIN16, **kw), 5)
    it = iter(pipeline.train_dataset(src, TRAIN16, workers=2, **kw))
    got = [next(it) for _ in range(3)]
    state = it.get_state()
    it2 = iter(pipeline.train_dataset(src, TRAIN16, workers=2, **kw))
    it2.set_state(state)
    got += [next(it2) for _ in range(2)]
    for w, g in zip(want, got):
        assert all(np.array_equal(w[k], g[k]) for k in w)
