"""The Heat Conduction layer against the physics it discretises."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hcnet.layers import HeatConduction
from hcnet.stencils import depthwise_conv, mean8_laplacian, neighbour_count, stencil_kernel


def heat_layer(form, k_mode="input", k_value=0.5, dim=4, seed=0):
    return HeatConduction(
        dim,
        heat_operator=form,
        k_mode=k_mode,
        k_value=k_value,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        depthwise_impl="shift",
        rngs=nnx.Rngs(seed),
    )


def test_neighbour_count_is_8_inside_5_on_edges_3_at_corners():
    n = neighbour_count(4, 5)[..., 0]
    assert n[1:-1, 1:-1].tolist() == [[8] * 3] * 2
    assert n[0, 0] == n[0, -1] == n[-1, 0] == n[-1, -1] == 3
    assert set(n[0, 1:-1]) == set(n[1:-1, 0]) == {5}
    assert neighbour_count(1, 3)[..., 0].tolist() == [[1, 2, 1]]
    assert neighbour_count(1, 1).item() == 0


def test_mean8_laplacian_matches_a_direct_loop():
    x = np.random.RandomState(0).standard_normal((1, 5, 6, 2)).astype(np.float32)
    want = np.zeros_like(x)
    for i in range(5):
        for j in range(6):
            nbrs = [
                x[0, a, b]
                for a in range(i - 1, i + 2)
                for b in range(j - 1, j + 2)
                if (a, b) != (i, j) and 0 <= a < 5 and 0 <= b < 6
            ]
            want[0, i, j] = np.mean(nbrs, axis=0) - x[0, i, j]
    np.testing.assert_allclose(mean8_laplacian(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k_mode", ["input", "learned", "fixed"])
def test_constant_field_is_a_fixed_point_of_mean8_everywhere(k_mode):
    layer = heat_layer("mean8", k_mode)
    x = jnp.full((2, 7, 9, 4), 3.25)
    np.testing.assert_allclose(x + layer(x), x, atol=1e-6)


def test_constant_field_is_a_fixed_point_of_learned5_where_the_stencil_fits():
    layer = heat_layer("learned5")
    x = jnp.full((2, 9, 11, 4), -1.5)
    y = x + layer(x)
    np.testing.assert_allclose(y[:, 2:-2, 2:-2], x[:, 2:-2, 2:-2], atol=1e-6)
    assert float(jnp.abs(y - x)[:, 0].max()) > 1e-4  # zero padding: heat leaks through the border


def test_learned3_as_written_moves_a_constant_field():
    """The architecture file's form: L(c) = -(sum(w) + w_centre) c, not 0; reproduced as written."""
    layer = heat_layer("learned3")
    c = -1.5
    x = jnp.full((1, 9, 9, 4), c)
    w = layer.stencil[...]
    want = -(w.sum(axis=(0, 1)) + w[1, 1]) * c  # (1, C)
    np.testing.assert_allclose(layer.laplacian(x)[0, 4, 4], want[0], rtol=1e-5)


@pytest.mark.parametrize("form", ["learned3", "learned5"])
def test_folded_stencil_kernel_equals_the_reference_formula(form):
    layer = heat_layer(form)
    x = jax.random.normal(jax.random.key(1), (2, 8, 10, 4))
    w = layer.stencil[...]
    conv = depthwise_conv(x, w, "conv")
    total = w.sum(axis=(0, 1))[0]
    want = conv - x * total if form == "learned5" else conv - x * w[1, 1, 0] - 2.0 * x * total
    np.testing.assert_allclose(layer.laplacian(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        depthwise_conv(x, stencil_kernel(w, form), "shift"),
        depthwise_conv(x, stencil_kernel(w, form), "conv"),
        rtol=1e-5,
        atol=1e-5,
    )


@settings(max_examples=30, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.just(1), st.integers(1, 6), st.integers(1, 6), st.just(3)),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    k=st.floats(0.0, 1.0),
    k_mode=st.sampled_from(["fixed", "input"]),
)
def test_mean8_with_k_in_0_1_creates_no_new_extrema(x, k, k_mode):
    """Discrete maximum principle: each channel's new field stays within its old min and max."""
    layer = heat_layer("mean8", k_mode, k_value=k, dim=3)
    y = np.asarray(x + layer(jnp.asarray(x)))
    tol = 1e-5 * (1.0 + np.abs(x).max())
    assert (y.min(axis=(1, 2)) >= x.min(axis=(1, 2)) - tol).all()
    assert (y.max(axis=(1, 2)) <= x.max(axis=(1, 2)) + tol).all()


def test_conductivity_modes():
    x = jax.random.normal(jax.random.key(0), (3, 5, 5, 4))
    k = heat_layer("mean8", "input").conductivity(x)
    assert k.shape == (3, 1, 1, 4) and bool(((k > 0) & (k < 1)).all())
    assert float(heat_layer("mean8", "fixed", k_value=0.3).conductivity(x)) == pytest.approx(0.3)
    learned = heat_layer("mean8", "learned", k_value=0.7)
    assert isinstance(learned.k, nnx.Param) and float(learned.conductivity(x)) == pytest.approx(0.7)
    np.testing.assert_allclose(
        heat_layer("mean8", "fixed", k_value=0.3)(x), 0.3 * mean8_laplacian(x), rtol=1e-6
    )


@pytest.mark.parametrize("form", ["mean8", "learned3", "learned5"])
@pytest.mark.parametrize("k_mode", ["input", "fixed"])
def test_the_heat_step_holds_only_the_padded_map(form, k_mode):
    """A performance check (not behaviour): XLA compiles x + k L(x) into one pass over the
    zero-padded map. Its temporaries are that padded map and a few small arrays (k, the folded
    kernel), where a program that kept the k*k shifted maps would hold at least nine maps."""
    layer = heat_layer(form, k_mode, dim=8)
    graphdef, state = nnx.split(layer)
    step = jax.jit(lambda s, x: x + nnx.merge(graphdef, s)(x))
    memory = (
        step.lower(state, jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32))
        .compile()
        .memory_analysis()
    )
    r = 2 if form == "learned5" else 1
    padded = 2 * (16 + 2 * r) ** 2 * 8 * 4
    assert padded <= memory.temp_size_in_bytes <= padded + 4096
    assert memory.output_size_in_bytes == 2 * 16 * 16 * 8 * 4
