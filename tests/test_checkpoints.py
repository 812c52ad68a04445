"""The run's CheckpointManager and the training step's pieces: retention, damage, accumulation, EMA, bf16."""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcnet import config as config_lib
from hcnet import sharding, trainer, workdir
from hcnet.data import augment
from hcnet.optim import lr_schedule, make_optimizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
workdir.configure_orbax()


def tiny_state(value: float) -> dict:
    return {"params": {"w": jnp.full((4, 4), value)}, "opt": {"mu": jnp.zeros((4, 4))},
            "step": jnp.asarray(int(value), jnp.int32), "bad": jnp.asarray(-1, jnp.int32)}


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(
        sharding.make_mesh())), state)


def test_keeps_the_latest_n_plus_the_best_top1(tmp_path):
    ckpt = workdir.Checkpoints(tmp_path, keep=2, async_save=True)
    top1 = {1: 0.1, 2: 0.9, 3: 0.2, 4: None, 5: 0.4, 6: 0.3}
    for step, t in top1.items():
        ckpt.save(step, tiny_state(step), {"next_index": step}, None if t is None else {"eval/top1": t})
    ckpt.wait()
    assert ckpt.steps() == [2, 5, 6]
    step, state, data = ckpt.restore(abstract(tiny_state(0)))
    assert step == 6 and data == {"next_index": 6} and float(state["params"]["w"][0, 0]) == 6.0
    ckpt.close()


def test_half_written_and_damaged_checkpoints_are_skipped(tmp_path):
    ckpt = workdir.Checkpoints(tmp_path, keep=5, async_save=False)
    for step in (1, 2):
        ckpt.save(step, tiny_state(step), {"next_index": step})
    ckpt.close()
    d = tmp_path / workdir.CHECKPOINTS
    (d / "3.orbax-checkpoint-tmp-1234" / "params").mkdir(parents=True)  # a save cut short by a kill
    (d / "3.orbax-checkpoint-tmp-1234" / "params" / "partial").write_bytes(b"\0" * 10)
    ckpt = workdir.Checkpoints(tmp_path, keep=5)
    assert ckpt.steps() == [1, 2]
    assert ckpt.restore(abstract(tiny_state(0)))[0] == 2
    for f in (d / "2" / "params").rglob("*"):  # now damage step 2's files
        if f.is_file():
            f.write_bytes(b"garbage")
    step, state, data = ckpt.restore(abstract(tiny_state(0)))
    assert step == 1 and data == {"next_index": 1} and float(state["params"]["w"][0, 0]) == 1.0
    ckpt.close()


def _step(c, accum=1, ema=0.0, dtype="float32"):
    c.model.dtype, c.model.drop_path = dtype, 0.0
    spec = config_lib.model_spec(c)
    model, _ = trainer.Model.abstract(spec)
    tx = make_optimizer(lr=1e-2, warmup_lr=1e-2, min_lr=1e-2, warmup_steps=0, total_steps=10)
    sched = lr_schedule(base_lr=1e-2, warmup_lr=1e-2, min_lr=1e-2, warmup_steps=0, total_steps=10)
    recipe = augment.Recipe(randaugment=None, reprob=0.0)  # mixing stays on: one lambda per whole batch
    step = jax.jit(functools.partial(trainer.train_step, model=model, tx=tx, schedule=sched, recipe=recipe,
                                     num_classes=10, accum=accum, ema_decay=ema))
    return step, trainer.init_state(model, tx, 0, spec, ema > 0)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return {"image": jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32), "mask": jnp.asarray(np.arange(16) != 3)}


def test_accumulated_micro_batches_give_the_update_of_the_whole_batch(batch):
    c = config_lib.load(str(ROOT / "configs/smoke.py"))
    one, state = _step(c)
    two, state2 = _step(c, accum=4)
    new1, m1 = one(state, batch, jax.random.key(1))
    new2, m2 = two(state2, batch, jax.random.key(1))
    np.testing.assert_allclose(m1.loss.compute(), m2.loss.compute(), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new1["params"]), jax.tree.leaves(new2["params"])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    assert int(new2["step"]) == 1 and int(new2["bad"]) == -1


def test_ema_and_bf16_compute_keep_fp32_parameters_and_optimizer_state(batch):
    c = config_lib.load(str(ROOT / "configs/smoke.py"))
    step, state = _step(c, ema=0.75, dtype="bfloat16")
    old = jax.tree.map(jnp.copy, state["params"])
    new, _ = step(state, batch, jax.random.key(1))
    for e, o, p in zip(*(jax.tree.leaves(t) for t in (new["ema"], old, new["params"]))):
        np.testing.assert_allclose(e, 0.75 * o + 0.25 * p, rtol=1e-6, atol=1e-7)
    floats = [x for x in jax.tree.leaves((new["params"], new["opt"], new["ema"])) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new["params"])))


def test_a_nonfinite_step_leaves_the_state_as_it_was_and_records_the_step(batch):
    c = config_lib.load(str(ROOT / "configs/smoke.py"))
    step, state = _step(c)
    state["params"]["head"]["kernel"] = state["params"]["head"]["kernel"].at[0, 0].set(jnp.inf)
    before = jax.tree.map(jnp.copy, state)
    new, m = step(state, batch, jax.random.key(1))
    assert int(new["bad"]) == 1 and not np.isfinite(float(m.loss.compute()))
    for a, b in zip(jax.tree.leaves((before["params"], before["opt"])), jax.tree.leaves((new["params"], new["opt"]))):
        np.testing.assert_array_equal(a, b)
