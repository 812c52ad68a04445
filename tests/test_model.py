"""The network: shapes at any resolution, variants, DropPath, precision, remat, arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hcnet.layers import conv_out_size, drop_path, drop_path_rates
from hcnet.model import VARIANTS, create_model, model_spec
from hcnet.nets import ModelDef, abstract, for_platform
from hcnet.stencils import depthwise_conv, gelu, gelu_filter


def plain_shifted_filter(x, kernel):
    """The 3x3 depthwise filter as nine shifted multiply-adds, left to autodiff."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    return sum(xp[:, i : i + h, j : j + w] * kernel[i, j, 0] for i in range(3) for j in range(3))


def forward(model, x):
    return nnx.jit(lambda m, x: m(x))(model, x)


def rngs(params=0, dropout=1):
    return nnx.Rngs(params=params, dropout=dropout)


def torch_stage_sizes(h, w):
    """PyTorch's conv arithmetic: stem (two stride-2 convs), then one stride-2 conv per stage."""
    sizes, (h, w) = [], (conv_out_size(conv_out_size(h)), conv_out_size(conv_out_size(w)))
    for _ in range(4):
        sizes.append((h, w))
        h, w = conv_out_size(h), conv_out_size(w)
    return sizes


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (45, 77), (97, 33)])
def test_mu_features_and_logits_at_any_resolution(size):
    model = create_model("mu", num_classes=7, rngs=rngs())
    x = jax.random.normal(jax.random.key(0), (2, *size, 3))
    feats = nnx.jit(lambda m, x: m.features(x))(model, x)
    dims = VARIANTS["mu"]["dims"]
    assert [f.shape for f in feats] == [
        (2, h, w, c) for (h, w), c in zip(torch_stage_sizes(*size), dims)
    ]
    logits = forward(model, x)
    assert logits.shape == (2, 7) and bool(jnp.isfinite(logits).all())


@pytest.mark.parametrize("variant, size", [("T", (224, 224)), ("T", (193, 97)), ("S", (256, 320))])
def test_paper_variants_shapes(variant, size):
    graphdef, state = nnx.split(abstract(model_spec(variant)))
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    feats, logits = jax.eval_shape(
        lambda s, x: (nnx.merge(graphdef, s).features(x), nnx.merge(graphdef, s)(x)), state, x
    )
    dims = VARIANTS[variant]["dims"]
    assert [f.shape for f in feats] == [
        (2, h, w, c) for (h, w), c in zip(torch_stage_sizes(*size), dims)
    ]
    assert logits.shape == (2, 1000)


def test_depths_and_dims_given_directly():
    model = abstract(model_spec(None, depths=(3, 8, 18, 3), dims=(64, 128, 320, 512)))
    assert [len(s.blocks) for s in model.stages] == [3, 8, 18, 3]


def test_num_classes_zero_returns_pooled_features():
    model = create_model("mu", num_classes=0, rngs=rngs())
    assert forward(model, jnp.ones((2, 32, 32, 3))).shape == (2, VARIANTS["mu"]["dims"][-1])


def test_init_follows_the_reference():
    model = create_model("mu", rngs=rngs())
    fc1 = model.stages[3].blocks[0].ra.fc1  # 64 x 256 weights
    assert (
        abs(float(fc1.kernel[...].std()) - 0.02) < 0.001
        and float(jnp.abs(fc1.bias[...]).max()) == 0
    )
    norm = model.stages[3].blocks[0].norm
    assert (
        float(norm.scale[...].min()) == float(norm.scale[...].max()) == 1.0 and norm.epsilon == 1e-5
    )
    # stem and downsampling convolutions keep nn.Conv2d's init: U(+-1/sqrt(fan_in)), bias too
    for conv, fan_in in ((model.stem.conv1, 27), (model.stages[0].downsample.conv, 9 * 16)):
        k = np.asarray(conv.kernel[...])
        assert (
            np.abs(k).max() <= fan_in**-0.5
            and abs(k.std() - fan_in**-0.5 / 3**0.5) < 0.1 * fan_in**-0.5
        )
    b = np.asarray(model.stem.conv1.bias[...])
    assert 0 < np.abs(b).max() <= 27**-0.5
    blocks_style = create_model("mu", conv_init="trunc_normal", rngs=rngs())
    assert abs(float(blocks_style.stem.conv1.kernel[...].std()) - 0.02) < 0.005
    assert float(jnp.abs(blocks_style.stem.conv1.bias[...]).max()) == 0


def test_drop_path_rates_follow_the_linear_rule():
    model = create_model("mu", drop_path=0.3, rngs=rngs())
    rates = [b.drop_path.rate for s in model.stages for b in s.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, sum(VARIANTS["mu"]["depths"])))
    assert drop_path_rates((1, 1), 0.2) == [0.0, 0.2]


def test_drop_path_and_dropout_are_off_in_eval():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    noisy = create_model("mu", drop_path=0.5, dropout=0.3, rngs=rngs())
    clean = create_model("mu", rngs=rngs())
    ev = nnx.view(noisy, deterministic=True)
    np.testing.assert_array_equal(forward(ev, x), forward(ev, x))
    np.testing.assert_allclose(forward(ev, x), forward(clean, x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(forward(noisy, x), forward(clean, x), atol=1e-4)


def test_drop_path_is_reproducible_from_the_rngs():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    a, b = (create_model("mu", drop_path=0.5, rngs=rngs(0, 1)) for _ in range(2))
    c = create_model("mu", drop_path=0.5, rngs=rngs(0, 2))
    first = forward(a, x)
    np.testing.assert_array_equal(first, forward(b, x))
    assert not np.array_equal(first, forward(c, x))
    assert not np.array_equal(first, forward(a, x))  # the stream advances between steps


@pytest.mark.parametrize("form", ["mean8", "learned5"])
def test_which_branches_drop_path_covers(form):
    """mean8 drops both residual branches (reference HcNet.py); the others only the RA branch."""
    model = create_model("mu", heat_operator=form, drop_path=0.999999, rngs=rngs())
    block = model.stages[3].blocks[0]  # the last block has the full rate
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, VARIANTS["mu"]["dims"][3]))
    y = block(x)
    want = x if form == "mean8" else x + block.heat(x)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_bf16_compute_stays_close_to_fp32():
    x = jax.random.normal(jax.random.key(0), (4, 64, 64, 3))
    fp32 = create_model("mu", rngs=rngs())
    bf16 = create_model("mu", dtype=jnp.bfloat16, rngs=rngs())
    assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }
    assert bf16.stages[0].blocks[0](jnp.ones((1, 8, 8, 16), jnp.bfloat16)).dtype == jnp.bfloat16
    a, b = forward(fp32, x), forward(bf16, x)
    assert b.dtype == jnp.float32
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 0.03


def test_remat_gives_the_same_outputs_and_gradients():
    plain, remat = (
        create_model("mu", heat_operator="learned5", remat=r, rngs=rngs()).stages[2]
        for r in (False, True)
    )
    assert len(remat.blocks) == 2 and remat.remat
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, VARIANTS["mu"]["dims"][2]))

    @nnx.jit
    def loss_and_grad(stage, x):
        return nnx.value_and_grad(lambda s: jnp.mean(s(x)[1] ** 2))(stage)

    def jaxpr(st):
        return str(
            jax.make_jaxpr(lambda s, x: nnx.merge(*nnx.split(st)[:1], s)(x)[1])(nnx.state(st), x)
        )

    assert "remat" in jaxpr(remat) and "remat" not in jaxpr(plain)
    (la, ga), (lb, gb) = loss_and_grad(plain, x), loss_and_grad(remat, x)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-7), ga, gb)


@pytest.mark.parametrize("form", ["mean8", "learned3", "learned5"])
def test_depthwise_shift_and_grouped_conv_forms_agree(form):
    x = jax.random.normal(jax.random.key(0), (2, 40, 36, 3))
    a = create_model("mu", heat_operator=form, rngs=rngs())
    b = create_model("mu", heat_operator=form, depthwise_impl="conv", rngs=rngs())
    np.testing.assert_allclose(forward(a, x), forward(b, x), rtol=1e-4, atol=1e-5)


def test_gelu_is_the_exact_gelu():
    x = jnp.linspace(-8.0, 8.0, 1001)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [3, 5, None])
def test_hand_written_backward_passes_equal_autodiff(size):
    """gelu_filter and depthwise_conv ('shift') against autodiff of jax.nn.gelu and XLA's grouped
    conv."""
    kh, kk, kg = jax.random.split(jax.random.key(size or 0), 3)
    h = 2.0 * jax.random.normal(kh, (2, 7, 9, 6))
    kernel = jax.random.normal(kk, (size, size, 1, 6)) if size else None
    cot = jax.random.normal(kg, h.shape)

    def grads(f):
        return jax.grad(
            lambda *a: jnp.sum(f(*a) * cot), argnums=tuple(range(1 + (size is not None)))
        )

    def reference(h, k=None):
        x = jax.nn.gelu(h, approximate=False)
        return depthwise_conv(x, k, "conv") if k is not None else x

    args = (h, kernel) if size else (h,)
    for got, want in zip(
        grads(lambda *a: gelu_filter(*a, "shift") if size else gelu_filter(a[0], None))(*args),
        grads(reference)(*args),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    if size:
        for got, want in zip(
            grads(lambda x, k: depthwise_conv(x, k, "shift"))(h, kernel),
            grads(lambda x, k: depthwise_conv(x, k, "conv"))(h, kernel),
        ):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_the_filter_backward_keeps_h_and_gelu_h_only():
    """Residuals the backward pass holds: h and GELU(h) (plus the kernel), where autodiff of the
    same forward keeps the nine shifted copies and the erfc terms as well."""
    h, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 4))

    def size(f):
        return sum(r.size for r in jax.tree.leaves(jax.vjp(f, h, kernel)[1]) if r.shape[:1] == (2,))

    assert size(lambda h, k: gelu_filter(h, k, "shift")) == 2 * h.size
    assert (
        size(lambda h, k: plain_shifted_filter(jax.nn.gelu(h, approximate=False), k)) >= 9 * h.size
    )


def test_shift_and_grouped_conv_forms_give_the_same_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 40, 36, 3))
    a, b = (
        create_model("mu", heat_operator="learned5", depthwise_impl=impl, rngs=rngs())
        for impl in ("shift", "conv")
    )
    grad = nnx.jit(lambda m, x: nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m))
    jax.tree.map(
        lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-6), grad(a, x), grad(b, x)
    )


def test_auto_is_the_shifted_form_on_the_cpu_bit_for_bit():
    """depthwise_impl='auto' (the default) lowers to the shifted multiply-adds for a CPU: no
    convolution in the program, and the gradients of 'shift' exactly (hcnet.measure.aot's tests
    check a TPU gets convolutions)."""
    x = jax.random.normal(jax.random.key(0), (2, 40, 36, 3))
    a, b = (
        create_model("mu", heat_operator="learned5", depthwise_impl=impl, rngs=rngs())
        for impl in ("auto", "shift")
    )
    grad = nnx.jit(lambda m, x: nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m))
    jax.tree.map(np.testing.assert_array_equal, grad(a, x), grad(b, x))
    from hcnet import stencils

    text = (
        jax.jit(jax.grad(lambda h, k: stencils.gelu_filter(h, k).sum(), (0, 1)))
        .lower(x, jnp.ones((3, 3, 1, 3)))
        .as_text()
    )
    assert "convolution" not in text


@pytest.mark.parametrize("form", ["mean8", "learned5"])
def test_scanned_stages_compute_the_unrolled_network(form):
    """model.block_loop="scan": the same parameters (one tree per block) give the same logits and
    gradients, to float32 reassociation (measured 1e-7 relative on the logits, 5e-7 on the
    gradients)."""
    x = jax.random.normal(jax.random.key(0), (2, 40, 36, 3))
    a, b = (
        nnx.view(
            create_model("mu", heat_operator=form, block_loop=loop, drop_path=0.2, rngs=rngs()),
            deterministic=True,
        )
        for loop in ("unroll", "scan")
    )
    assert jax.tree.structure(nnx.state(a, nnx.Param)) == jax.tree.structure(
        nnx.state(b, nnx.Param)
    )
    np.testing.assert_allclose(forward(b, x), forward(a, x), rtol=1e-5, atol=1e-6)
    grad = nnx.jit(lambda m, x: nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m))
    jax.tree.map(
        lambda p, q: np.testing.assert_allclose(q, p, rtol=1e-4, atol=1e-7), grad(a, x), grad(b, x)
    )


def test_scanned_drop_path_drops_whole_examples_at_its_rate():
    x = jnp.ones((4000, 2, 2, 3))
    np.testing.assert_array_equal(drop_path(jax.random.key(0), x, jnp.float32(0.0)), x)
    y = np.asarray(drop_path(jax.random.key(1), x, jnp.float32(0.25)))
    per_example = y.reshape(4000, -1)
    np.testing.assert_allclose(
        np.unique(per_example), [0.0, 1 / 0.75], rtol=1e-6
    )  # dropped, or scaled up
    assert (per_example.min(1) == per_example.max(1)).all()  # a whole example's map, or none of it
    assert (
        abs((per_example[:, 0] == 0).mean() - 0.25) < 0.03
    )  # 4.4 standard deviations of 4000 draws
    m = create_model("mu", block_loop="scan", drop_path=0.5, rngs=rngs())
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    first, second, evaluation = m(x), m(x), nnx.view(m, deterministic=True)(x)
    assert not np.allclose(first, second) and not np.allclose(first, evaluation)


@pytest.mark.parametrize("remat", [False, True])
def test_a_scanned_stage_recomputes_its_blocks_for_the_backward_pass(remat):
    """A scanned stage's block is checkpointed with nothing saved but its input, with or without
    model.remat: its backward pass recomputes the block (for HcNet-T on v5e, the fewest bytes per
    image of the policies compared: BENCHMARKS.md, "Where the bytes go")."""
    model_def, params = ModelDef.from_spec(
        model_spec("mu", block_loop="scan", remat=remat, drop_path=0.1)
    )

    def loss(p, x):
        return jnp.mean(model_def.bind(p, jax.random.key(1))(x) ** 2)  # training mode, as the step

    jaxpr = jax.make_jaxpr(loss)(
        params, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    )  # (grad inlines it)

    def policies(jaxpr, inside_scan=False):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("checkpoint", "remat2") and inside_scan:
                yield eqn.params["policy"]
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from policies(sub, inside_scan or eqn.primitive.name == "scan")

    found = list(policies(jaxpr.jaxpr))
    assert found and all(p is None for p in found), found


def test_auto_block_loop_scans_for_a_tpu_and_unrolls_elsewhere():
    """for_platform resolves model.block_loop="auto" per platform; a scan or unroll chosen by hand
    stays, and dropout (which a scanned stage does not draw) keeps the blocks unrolled. A spec
    written when the switch was the boolean scan_blocks still builds."""
    spec = model_spec("mu")
    assert spec.get("block_loop", "auto") == "auto"
    assert for_platform(spec, "tpu")["block_loop"] == "scan"
    assert for_platform(spec, "cpu")["block_loop"] == "unroll"
    assert for_platform(spec, "gpu")["block_loop"] == "unroll"
    assert for_platform({**spec, "dropout": 0.1}, "tpu")["block_loop"] == "unroll"
    assert for_platform({**spec, "block_loop": "unroll"}, "tpu")["block_loop"] == "unroll"
    assert for_platform({**spec, "block_loop": "scan"}, "cpu")["block_loop"] == "scan"

    def scanned(m):
        return [s.scan for s in m.stages]

    assert scanned(abstract(for_platform(spec, "tpu"))) == [True] * 4
    assert scanned(abstract(spec)) == [False] * 4  # unresolved "auto": unrolled
    assert scanned(abstract({**spec, "scan_blocks": True})) == [True] * 4


def test_ablation_switches_change_the_parameters():
    def count(**kw):
        return sum(
            p.size for p in jax.tree.leaves(nnx.state(abstract(model_spec("mu", **kw)), nnx.Param))
        )

    blocks, dims = VARIANTS["mu"]["depths"], VARIANTS["mu"]["dims"]
    gates = sum(n * d * d for n, d in zip(blocks, dims))
    filters = sum(n * 9 * 4 * d for n, d in zip(blocks, dims))
    base = count()
    assert base - count(k_mode="fixed") == gates
    assert base - count(k_mode="learned") == gates - sum(blocks)
    assert base - count(ra_filter=False) == filters


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(heat_operator="mean9"),
            "model.heat_operator='mean9': one of mean8, learned3, learned5",
        ),
        (dict(k_mode="sometimes"), "model.k_mode='sometimes': one of input, learned, fixed"),
        (dict(drop_path=1.5), "model.drop_path=1.5: must be in [0, 1)"),
        (dict(depths=(1, 1, 1)), "four positive depths"),
    ],
)
def test_bad_arguments_stop_with_one_line(kwargs, message):
    with pytest.raises(ValueError) as err:
        create_model("mu", rngs=rngs(), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="model.variant='XL': one of mu, T, S, B"):
        model_spec("XL")
