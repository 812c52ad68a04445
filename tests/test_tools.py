"""eval.py, hcnet.serve (predict, visualize) and hcnet.measure (bench, roofline) on the smoke run,
and the numbers behind the figures."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import hcnet
from hcnet import checkpoint, eval_report, tools, trained
from hcnet.data import augment, sources, transforms
from hcnet.errors import ConfigError, UserError
from hcnet.measure import bench, roofline
from hcnet.model import create_model
from hcnet.serve import analysis, predict, visualize
from hcnet.tools import predict as predict_tool

ROOT = pathlib.Path(__file__).resolve().parent.parent
checkpoint.configure_orbax()


def write_images(directory: pathlib.Path) -> dict:
    """Two readable images (PNG, JPEG), a text file named like an image, and a path that does not
    exist."""
    rng = np.random.default_rng(0)
    files = {
        "good.png": rng.integers(0, 256, (40, 30, 3), dtype=np.uint8),
        "photo.jpg": rng.integers(0, 256, (50, 64, 3), dtype=np.uint8),
    }
    for name, array in files.items():
        Image.fromarray(array).save(directory / name)
    (directory / "notes.jpg").write_text("not an image")
    return {
        name: str(directory / name)
        for name in ("good.png", "photo.jpg", "notes.jpg", "missing.png")
    }


def table_rows(text: str) -> list[dict]:
    """A printed table (columns two or more spaces apart) as one {header: cell} dict per row."""
    head, *rows = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]
    return [dict(zip(head, row)) for row in rows]


# ---------------------------------------------------------------- eval
def test_evaluation_counts_every_example_for_raw_and_ema_and_matches_training(smoke_run):
    run_dir, result, _ = smoke_run
    c = trained.read_config(run_dir)
    report = eval_report.evaluate(c, run_dir)
    assert report["step"] == 8 and set(report["results"]) == {"raw", "ema"}
    for name, prefix in (("raw", "eval"), ("ema", "eval_ema")):
        got = report["results"][name]
        assert got["count"] == 40 == report["examples"]
        for metric in ("top1", "top5", "loss"):
            assert got[metric] == pytest.approx(result[f"{prefix}/{metric}"], abs=1e-6)

    # a slice that leaves a padded last batch, at another resolution and crop, an older step
    c.dataset.eval_split, c.dataset.image_size, c.dataset.crop_pct = "validation[:13]", 48, 1.0
    c.evals = (
        dict(name="train_40", split="train[:7]", image_size=40),
    )  # config.evals: one more, its own rows
    report = eval_report.evaluate(c, run_dir, step=4, weights=["ema"])
    assert report["step"] == 4 and list(report["results"]) == ["ema"]
    assert report["results"]["ema"]["count"] == 13 and report["image_size"] == 48
    assert report["results"]["ema"]["train_40/count"] == 7
    rows = table_rows(eval_report.report_table(report))
    assert [
        (r["weights"], r["step"], r["eval"], r["split"], r["size"], r["crop"], r["count"])
        for r in rows
    ] == [
        ("ema", "4", "eval", "validation[:13]", "48", "1.000", "13"),
        ("ema", "4", "train_40", "train[:7]", "40", "1.000", "7"),
    ]
    assert float(rows[0]["top1"]) == pytest.approx(report["results"]["ema"]["top1"], abs=5e-5)
    assert float(rows[1]["top1"]) == pytest.approx(
        report["results"]["ema"]["train_40/top1"], abs=5e-5
    )


def test_evaluation_refuses_what_it_cannot_do_in_one_line(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    c = trained.read_config(run_dir)
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint at step 5 \(steps there: \[4, 8\]\)"
    ):
        eval_report.evaluate(c, run_dir, step=5)
    with pytest.raises(FileNotFoundError, match="not an hcnet checkpoint or training workdir"):
        eval_report.evaluate(c, tmp_path)
    c.dataset.num_classes = 1000  # synthetic data takes the config's class count
    with pytest.raises(
        ConfigError, match=r"head has 10 classes but config.dataset.num_classes=1000 \(synthetic\)"
    ):
        eval_report.evaluate(c, run_dir)
    c.eval_batch_size = 12
    with pytest.raises(
        ConfigError,
        match=r"eval_batch_size=12: 0 \(batch_size\) or a positive multiple of the 8 devices",
    ):
        eval_report.evaluate(c, run_dir)
    c.eval_batch_size = 0
    with pytest.raises(ConfigError, match="weights=raw,best: each must be raw or ema"):
        eval_report.evaluate(c, run_dir, weights=["raw", "best"])


def test_eval_py_prints_the_table_and_writes_json(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    out = tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"--workdir={run_dir}",
            "--split=validation[:10]",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines()[1:3]]
    assert [r[0] for r in rows] == ["raw", "ema"] and all(r[-1] == "10" for r in rows)
    report = json.loads(out.read_text())
    assert report["split"] == "validation[:10]" and report["results"]["ema"]["count"] == 10


# ---------------------------------------------------------------- predict
def test_predict_gives_sorted_top5_and_keeps_going_past_bad_files(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    files = write_images(tmp_path)
    results, failed = predict.classify(trained.open(run_dir), list(files.values()))
    assert list(results) == [files["good.png"], files["photo.jpg"]]
    assert dict(failed) == {
        files["notes.jpg"]: "not an image Pillow can decode (JPEG, PNG, BMP, GIF, WebP, TIFF are)",
        files["missing.png"]: "no such file",
    }
    # the same probabilities as the loaded model on the run's evaluation preprocessing (32 px, crop
    # 0.875)
    model = hcnet.load(run_dir)
    image = transforms.eval_image(pathlib.Path(files["photo.jpg"]).read_bytes(), 32, 0.875)
    logits = nnx.jit(lambda m, x: m(x))(model, augment.normalize(image[None]))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))[0]
    top = results[files["photo.jpg"]]
    assert [r["class"] for r in top] == list(np.argsort(-probs)[:5])
    np.testing.assert_allclose([r["probability"] for r in top], np.sort(probs)[::-1][:5], rtol=1e-5)
    assert [r["name"] for r in top] == [
        f"class {r['class']}" for r in top
    ]  # synthetic data has no names


def test_predict_command_line_reports_skips_and_ends_with_their_count(smoke_run, tmp_path, capsys):
    run_dir, _, _ = smoke_run
    files = write_images(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        tools.invoke(
            predict_tool.main,
            [
                f"--checkpoint={run_dir}",
                "--json",
                "--top=3",
                files["good.png"],
                files["missing.png"],
            ],
        )
    assert exit_.value.code == "error: 1 of the 2 files skipped (above: why)"
    out, err = capsys.readouterr()
    assert err.strip() == f"skipped {files['missing.png']}: no such file"
    assert len(json.loads(out)["predictions"][files["good.png"]]) == 3


def test_a_1000_class_head_gets_the_imagenet_names(tmp_path):
    names = sources.imagenet_names()
    assert (
        len(names) == 1000 and len(set(names)) == 999
    )  # "crane" is a bird (134) and a machine (517)
    assert (
        names[0] == "tench, Tinca tinca"
        and names[1].startswith("goldfish")
        and names[999].startswith("toilet tissue")
    )
    assert names[134] == names[517] == "crane"
    assert sources.class_names(None, 1000) == names  # no config: ImageNet's names for 1000 classes
    assert sources.class_names(None, 3) == ["class 0", "class 1", "class 2"]


# ---------------------------------------------------------------- the numbers behind the figures
def test_radial_spectrum_puts_a_sinusoid_at_its_frequency():
    y, x = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    for cycles in (0.125, 0.25, 0.375):
        wave = (
            np.cos(2 * np.pi * cycles * x)[None, :, :, None] + 3.0
        )  # the constant is removed first
        freqs, power = analysis.radial_spectrum(wave)
        assert freqs[np.argmax(power)] == pytest.approx(cycles)
        assert power.max() > 100 * np.delete(power, np.argmax(power)).max()
    assert analysis.high_frequency_share(
        np.cos(2 * np.pi * 0.375 * x)[None, :, :, None]
    ) == pytest.approx(1.0)
    assert analysis.high_frequency_share(
        np.cos(2 * np.pi * 0.125 * x)[None, :, :, None]
    ) == pytest.approx(0.0)


def test_a_heat_only_stack_of_blocks_loses_high_frequencies_monotonically():
    """Paper Figure 1c: each heat step low-passes, so the high-frequency share falls block after
    block."""
    net = create_model(
        None, depths=(10, 1, 1, 1), dims=(16, 16, 16, 16), num_classes=0, rngs=nnx.Rngs(0)
    )
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 16))
    shares, high = [analysis.high_frequency_share(x)], []
    for block in net.stages[0].blocks:
        k = block.heat.conductivity(x)
        assert 0 < float(k.min()) and float(k.max()) < 1  # sigmoid: inside the stable range
        x = x + block.heat(x)
        shares.append(analysis.high_frequency_share(x))
        freqs, power = analysis.radial_spectrum(x)
        high.append(power[freqs > 0.25].sum())
    assert all(b < a for a, b in zip(shares, shares[1:])), shares
    assert all(b < a for a, b in zip(high, high[1:]))
    assert shares[-1] < 0.25 * shares[0]


def test_trace_follows_the_model_and_reports_each_blocks_k():
    net = create_model("mu", num_classes=10, rngs=nnx.Rngs(0))
    net = nnx.view(net, deterministic=True)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    t, features = nnx.jit(lambda m, x: (analysis.trace(m, x), m.features(x)))(net, x)
    for a, b in zip(t["stages"], features):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [int(s) for s in t["stage_of_block"]] == [0, 1, 2, 2, 3] and [
        k.shape for k in t["k"]
    ] == [(2, 16), (2, 32), (2, 48), (2, 48), (2, 64)]
    block = net.stages[2].blocks[1]
    gate = jax.nn.sigmoid(block.heat.gate(t["blocks"][2].mean(axis=(1, 2))))
    np.testing.assert_allclose(t["k"][3], gate, rtol=1e-5)
    learned = create_model("mu", num_classes=10, k_mode="learned", k_value=0.3, rngs=nnx.Rngs(0))
    learned_k = nnx.jit(lambda m, x: analysis.trace(m, x)["k"])(learned, x)
    assert [float(k.mean()) for k in learned_k] == pytest.approx([0.3] * 5)
    np.testing.assert_allclose(
        analysis.temperature(t["stages"][0]), t["stages"][0].mean(-1), rtol=1e-6
    )


def test_grad_cam_lights_up_the_evidence_for_the_class_and_not_against_it():
    feats = np.zeros((1, 8, 8, 2), np.float32)
    feats[0, 1, 2, 0] = 5.0  # evidence in channel 0 at (1, 2)
    feats[0, 6, 5, 1] = 5.0  # evidence in channel 1 at (6, 5)
    weights = jnp.array([[1.0, -1.0], [-1.0, 1.0]])  # class 0 likes channel 0, class 1 channel 1

    def tail(a):
        return a.mean(axis=(1, 2)) @ weights

    cam0 = np.asarray(analysis.grad_cam_map(jnp.asarray(feats), tail, np.array([0])))[0]
    cam1 = np.asarray(analysis.grad_cam_map(jnp.asarray(feats), tail, np.array([1])))[0]
    assert (
        np.unravel_index(cam0.argmax(), cam0.shape) == (1, 2)
        and cam0[6, 5] == 0
        and cam0.max() == 1
    )
    assert np.unravel_index(cam1.argmax(), cam1.shape) == (6, 5) and cam1[1, 2] == 0
    assert (cam0 >= 0).all() and (cam1 >= 0).all()


def test_visualize_writes_four_figures_and_the_numbers_behind_them(smoke_run, tmp_path, bucket):
    """(Into a folder on gs://, which a TPU VM's user would give.)"""
    from hcnet import paths as paths_lib

    run_dir, _, _ = smoke_run
    files = write_images(tmp_path)
    written, failed = visualize.visualize(
        trained.open(run_dir), [files["good.png"], files["notes.jpg"]], f"{bucket}/figures"
    )
    assert [f for f, _ in failed] == [files["notes.jpg"]]
    paths = written[files["good.png"]]
    assert all(str(p).startswith(f"{bucket}/figures/") for p in paths.values())
    for name in ("k", "temperature", "spectrum", "gradcam"):
        with paths_lib.path(paths[name]).open("rb") as f:
            image = Image.open(f)
            image.load()
        assert image.format == "PNG" and image.size[0] > 500 and np.asarray(image).std() > 10
    numbers = json.loads(paths_lib.path(paths["numbers"]).read_text())
    assert numbers["stage_of_block"] == [0, 1, 2, 2, 3] and [len(k) for k in numbers["k"]] == [
        16,
        32,
        48,
        48,
        64,
    ]
    assert all(0 < v < 1 for k in numbers["k"] for v in k)
    assert [np.shape(m) for m in numbers["temperature"]] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert [np.shape(m) for m in numbers["grad_cam"]] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    # scaled to [0, 1]: the peak divided by itself, which XLA may compute as x * (1 / x), 2
    # roundings from 1
    assert all(
        np.min(m) >= 0 and (np.max(m) == 0 or abs(np.max(m) - 1) <= 2 * 2.0**-23)
        for m in numbers["grad_cam"]
    )
    assert any(np.max(m) > 0 for m in numbers["grad_cam"]), [
        float(np.max(m)) for m in numbers["grad_cam"]
    ]
    assert (
        len(numbers["high_frequency_share"]) == 6
        and numbers["class"] == f"class {numbers['target']}"
    )
    with pytest.raises(UserError, match="--target_class=10: the model has 10 classes; give 0 to 9"):
        visualize.visualize(trained.open(run_dir), [files["good.png"]], tmp_path / "out", target=10)


# ---------------------------------------------------------------- bench
@pytest.mark.heavy
def test_bench_times_training_and_inference_steps():
    seconds = bench.train_step_seconds(
        "mu", 2, 32, repeats=1, devices=1
    )  # the program data.bench also times
    assert isinstance(seconds, float) and 0 < seconds < 60
    r = bench.measure("mu", 8, 32, mode="infer", repeats=2)
    assert r.devices == 8 and r.images_per_s == pytest.approx(8 / r.step_s)
    assert r.images_per_s_per_device == pytest.approx(r.images_per_s / 8)
    # XLA counts the elementwise work too: at least the conv + linear convention, not wildly more
    assert r.model_flops_per_image <= r.flops_per_image < 4 * r.model_flops_per_image
    assert (
        r.mfu is None and r.peak_source == "xla" and r.peak_bytes > 0
    )  # no peak or memory stats on CPU
    with pytest.raises(UserError, match="--batch=6 must be a multiple of the 8 devices"):
        bench.measure("mu", 6, 32)


def test_peak_table_and_what_the_printout_says():
    assert roofline.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert (
        roofline.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
        and roofline.peak_tflops("TPU v5", "bfloat16") == 459.0
    )
    assert roofline.peak_tflops("cpu", "float32") is None
    r = bench.Result(
        "jax",
        "train",
        "T",
        128,
        224,
        "bfloat16",
        1,
        "NVIDIA H100",
        30.0,
        0.25,
        512.0,
        512.0,
        flops_per_image=3e10,
        mfu=0.0621,
        peak_bytes=2**33,
        peak_source="device",
    )
    row = table_rows(bench.results_table([r]))[0]
    assert (row["step ms"], row["img/s"], row["compile s"], row["MFU"]) == (
        "250.0",
        "512.0",
        "30.0",
        "6.2%",
    )
    assert (
        row["peak mem"] == "8.00 GiB (device)"
        and row["GFLOP/img"] == "30"
        and row["faults/step"] == "-"
    )


# ---------------------------------------------------------------- notebook
@pytest.mark.heavy
def run_notebook(name: str) -> dict:
    """Every code cell in order in one namespace, as a kernel would; `%pip` lines are for Colab and
    skipped."""
    notebook = json.loads((ROOT / "notebooks" / name).read_text())
    namespace = {}
    for cell in (c for c in notebook["cells"] if c["cell_type"] == "code"):
        source = "".join(
            line for line in cell["source"] if not line.lstrip().startswith(("%", "!"))
        )
        exec(compile(source, f"{name}:{cell['id']}", "exec"), namespace)
    return namespace


def test_the_quickstart_notebook_runs_top_to_bottom(smoke_run, tmp_path, monkeypatch):
    """Every code cell in order in one namespace, as a kernel would; `%pip` lines are for Colab and
    skipped. (After the smoke run: the notebook's tiny setting trains the smoke recipe, so its step
    is compiled.)"""
    monkeypatch.setenv("HCNET_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("HCNET_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(ROOT)
    namespace = run_notebook("quickstart.ipynb")
    assert (
        namespace["result"]["step"] == 8 and namespace["report"]["results"]["raw"]["count"] == 360
    )
    assert len(namespace["predictions"]) == 3 and len(namespace["skipped"]) == 1
    assert all(
        pathlib.Path(p).is_file() for p in namespace["figures"][namespace["files"][0]].values()
    )
    assert namespace["logits"].shape == (1, 10)


@pytest.mark.heavy
def test_the_finetune_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """Its tiny setting: 8 pretraining and 8 fine-tuning updates, then evaluation, export and
    serving."""
    monkeypatch.setenv("HCNET_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("HCNET_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(ROOT)
    ns = run_notebook("finetune.ipynb")
    assert ns["pre_result"]["step"] == 8 and ns["result"]["step"] == 8
    assert (
        "init_from" in ns["said"].getvalue()
        and "59 arrays loaded, 2 skipped on purpose, 0 new" in ns["said"].getvalue()
    )
    test_images = sum(1 for _ in (tmp_path / "my_images" / "test").glob("*/*.png"))
    assert ns["report"]["results"]["raw"]["count"] == test_images == ns["report"]["examples"]
    assert ns["info"]["classes"] == ["5", "6", "7", "8", "9"] and ns["probabilities"].shape == (
        3,
        5,
    )
    assert float(np.abs(ns["probabilities"] - ns["expected"]).max()) <= 16 * 2.0**-24


def test_roofline_tally_for_hcnet_t():
    assert roofline.block_units(4.0) == (23, 37)
    out = roofline.estimate("T", 224, batch=128)
    assert out["train_flops_per_image"] == 6 * 4_153_917_440 and out["params"] == 28_416_936
    elements = (
        5 * 64 * 56**2 + 5 * 128 * 28**2 + 14 * 320 * 14**2 + 5 * 512 * 7**2
    )  # sum of C H W per block
    assert out["activation_bytes"]["blocks"] == 2 * 60 * elements
    assert out["bytes_per_image"] == pytest.approx(
        sum(out["activation_bytes"].values()) + 36 * 28_416_936 / 128
    )
    h100 = out["devices"]["H100 SXM"]
    assert h100["bound"] == "memory" and h100["floor_img_s"] == pytest.approx(
        3350e9 / out["bytes_per_image"]
    )
