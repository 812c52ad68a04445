"""The run's CheckpointManager and the training step's pieces: retention, damage, accumulation, EMA,
bf16."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from runs import smoke

from hcnet import checkpoint, sharding, tasks
from hcnet.optim import lr_schedule, make_optimizer
from hcnet.program import Program

ROOT = pathlib.Path(__file__).resolve().parent.parent
checkpoint.configure_orbax()


def tiny_state(value: float) -> dict:
    return {
        "params": {"w": jnp.full((4, 4), value)},
        "opt": {"mu": jnp.zeros((4, 4))},
        "step": jnp.asarray(int(value), jnp.int32),
        "nonfinite_step": jnp.asarray(-1, jnp.int32),
    }


def abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=sharding.replicated(sharding.make_mesh())
        ),
        state,
    )


def test_keeps_the_latest_n_plus_the_best_top1(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=2, async_save=True)
    top1 = {1: 0.1, 2: 0.9, 3: 0.2, 4: None, 5: 0.4, 6: 0.3}
    for step, t in top1.items():
        ckpt.save(
            step, tiny_state(step), {"next_index": step}, None if t is None else {"eval/top1": t}
        )
    ckpt.wait()
    assert ckpt.steps() == [2, 5, 6]
    step, state, data = ckpt.restore(abstract(tiny_state(0)))
    assert step == 6 and data == {"next_index": 6} and float(state["params"]["w"][0, 0]) == 6.0
    ckpt.close()


def test_half_written_and_damaged_checkpoints_are_skipped(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=5, async_save=False)
    for step in (1, 2):
        ckpt.save(step, tiny_state(step), {"next_index": step})
    ckpt.close()
    d = tmp_path / checkpoint.CHECKPOINTS
    (d / "3.orbax-checkpoint-tmp-1234" / "params").mkdir(parents=True)  # a save cut short by a kill
    (d / "3.orbax-checkpoint-tmp-1234" / "params" / "partial").write_bytes(b"\0" * 10)
    ckpt = checkpoint.Checkpoints(tmp_path, keep=5)
    assert ckpt.steps() == [1, 2]
    assert ckpt.restore(abstract(tiny_state(0)))[0] == 2
    for f in (d / "2" / "params").rglob("*"):  # now damage step 2's files
        if f.is_file():
            f.write_bytes(b"garbage")
    step, state, data = ckpt.restore(abstract(tiny_state(0)))
    assert step == 1 and data == {"next_index": 1} and float(state["params"]["w"][0, 0]) == 1.0
    ckpt.close()


def _step(accum=1, ema=0.0, dtype="float32", tx=None):
    """The smoke config's jitted train step (no RandAugment or erasing; mixing stays on: one lambda
    per whole batch) and its initial state."""
    c = smoke(
        **{
            "model.dtype": dtype,
            "model.drop_path": 0.0,
            "augment.randaugment": "",
            "augment.reprob": 0.0,
        }
    )
    task = tasks.create(c)
    schedule = lr_schedule(
        base_lr=1e-2, warmup_lr=1e-2, min_lr=1e-2, warmup_steps=0, total_steps=10
    )
    program = Program.build(
        task,
        tx or make_optimizer(schedule),
        schedule,
        sharding.make_mesh(),
        seed=0,
        accum=accum,
        ema_decay=ema,
    )
    return program.step, program.init()


def keep_gradients() -> optax.GradientTransformation:
    """An 'optimizer' that leaves the parameters alone and keeps the step's gradients as its
    state."""

    def zeros(tree):
        return jax.tree.map(jnp.zeros_like, tree)

    return optax.GradientTransformation(
        zeros, lambda grads, state, params=None: (zeros(grads), grads)
    )


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
        "mask": jnp.asarray(np.arange(16) != 3),
    }


@pytest.mark.heavy
def test_accumulated_micro_batches_give_the_gradient_of_the_whole_batch(batch):
    """4 micro-batches of 4 and one batch of 16 differ only in the order float32 sums are taken.

    The longest sum in this network's backward pass is a convolution's weight gradient over the
    batch and the first 16x16 map: n = 16 * 16 * 16 = 4096 terms. Reordering a float32 sum changes
    it by at most 2 (n - 1) u sum|terms| (u = 2^-24): 4.9e-4 of the terms' magnitude, for which each
    array's largest gradient stands in. The gradients are compared, not the parameters after AdamW,
    whose first step divides by |g| + eps and so turns a rounding difference in a gradient near 0
    into any difference.
    """
    tolerance = 2 * (16 * 16 * 16 - 1) * 2.0**-24
    one, state = _step(tx=keep_gradients())
    four, state4 = _step(accum=4, tx=keep_gradients())
    new1, m1 = one(state, batch, jax.random.key(1))
    new4, m4 = four(state4, batch, jax.random.key(1))
    np.testing.assert_allclose(m1.loss.compute(), m4.loss.compute(), rtol=tolerance)
    g1, g4 = jax.tree.leaves(new1["opt"]), jax.tree.leaves(new4["opt"])
    assert len(g1) == len(g4) > 10 and any(float(jnp.abs(g).max()) > 0 for g in g1)
    for a, b in zip(g1, g4):
        np.testing.assert_allclose(a, b, rtol=0, atol=tolerance * float(jnp.abs(a).max()))
    assert int(new4["step"]) == 1 and int(new4["nonfinite_step"]) == -1


@pytest.mark.heavy
def test_ema_and_bf16_compute_keep_fp32_parameters_and_optimizer_state(batch):
    step, state = _step(ema=0.75, dtype="bfloat16")
    old = jax.tree.map(jnp.copy, state["params"])
    new, _ = step(state, batch, jax.random.key(1))
    for e, o, p in zip(*(jax.tree.leaves(t) for t in (new["ema"], old, new["params"]))):
        np.testing.assert_allclose(e, 0.75 * o + 0.25 * p, rtol=1e-6, atol=1e-7)
    floats = [
        x
        for x in jax.tree.leaves((new["params"], new["opt"], new["ema"]))
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new["params"]))
    )


@pytest.mark.heavy
def test_a_nonfinite_step_leaves_the_state_as_it_was_and_records_the_step(batch):
    step, state = _step()
    state["params"]["head"]["kernel"] = state["params"]["head"]["kernel"].at[0, 0].set(jnp.inf)
    before = jax.tree.map(jnp.copy, state)
    new, m = step(state, batch, jax.random.key(1))
    assert int(new["nonfinite_step"]) == 1 and not np.isfinite(float(m.loss.compute()))
    for a, b in zip(
        jax.tree.leaves((before["params"], before["opt"])),
        jax.tree.leaves((new["params"], new["opt"])),
    ):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- BatchNorm's running statistics
# (UperNet's heads)
class _BatchNormNet(nnx.Module):
    def __init__(self, *, rngs):
        self.fc = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.bn(self.fc(x))))


class _BatchNormTask:
    """The least a task needs for Program: a network with BatchNorm, inputs, a loss."""

    spec = {"num_classes": 3}

    @staticmethod
    def build(spec, *, rngs):
        return _BatchNormNet(rngs=rngs)

    def train_inputs(self, key, batch):
        return batch["image"], jax.nn.one_hot(batch["label"], 3)

    def forward(self, net, inputs):
        return net(inputs)

    def loss(self, logits, targets):
        return optax.softmax_cross_entropy(logits, targets)


@pytest.mark.parametrize("accum", [1, 2])
def test_running_statistics_travel_in_the_weights_and_follow_batchnorms_momentum(accum):
    """The statistics sit beside the parameters (one tree, so checkpoints, EMA and loading carry
    them); the step updates them as BatchNorm does over the global batch (micro-batch after
    micro-batch when accumulating), and the optimizer leaves them alone (the loss does not depend on
    them: no gradient, no weight decay on 1-D)."""
    schedule = lr_schedule(
        base_lr=1e-2, warmup_lr=1e-2, min_lr=1e-2, warmup_steps=0, total_steps=10
    )
    program = Program.build(
        _BatchNormTask(),
        make_optimizer(schedule),
        schedule,
        sharding.make_mesh(),
        seed=0,
        accum=accum,
    )
    state = program.init()
    bn = jax.device_get(state["params"]["bn"])
    assert set(bn) == {"scale", "bias", "mean", "var"}
    np.testing.assert_array_equal(bn["mean"], 0)
    np.testing.assert_array_equal(bn["var"], 1)
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (16, 4)).astype(np.float32)
    batch = {"image": x, "label": rng.integers(0, 3, 16), "mask": np.ones(16, bool)}
    fc = jax.device_get(state["params"]["fc"])
    new, _ = program.step(state, jax.device_put(batch, program.batch_sharding), jax.random.key(0))
    h = x @ fc["kernel"] + fc["bias"]
    mean, var = np.zeros(8), np.ones(8)
    for i in range(accum):  # micro-batch i takes rows i, i + accum, ...
        part = h[i::accum]
        mean, var = 0.9 * mean + 0.1 * part.mean(0), 0.9 * var + 0.1 * part.var(0)
    got = jax.device_get(new["params"]["bn"])
    # float32 over 16 rows (and flax's E[x^2] - E[x]^2 on values of order 10): a few 1e-6 at most,
    # against numpy's float64
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["var"], var, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got["scale"], bn["scale"])  # the parameters did move
