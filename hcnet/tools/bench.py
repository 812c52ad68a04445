"""Training and inference throughput of HcNet (beside PyTorch: python -m reference.bench).

    python -m hcnet.tools.bench --variant=T --batch=128 --image_size=224 --dtype=bfloat16 \\
        [--devices=N]
        [--mode=train,infer] [--repeats=10] [--json] [--trace=DIR]

What each column means: hcnet.measure.bench.
"""

from absl import flags

from hcnet import tools

flags.DEFINE_string("dtype", "float32", "compute dtype: float32, bfloat16 or float16")
flags.DEFINE_integer("devices", None, "the first N devices (default: all)", lower_bound=1)
flags.DEFINE_list("mode", ["train", "infer"], "train, infer or both")
flags.DEFINE_bool("remat", False, "recompute each block in the backward pass")
flags.DEFINE_string(
    "depthwise_impl", "auto", "the depthwise filters: auto (per platform), shift or conv"
)
flags.DEFINE_string("block_loop", "auto", "a stage's blocks: auto (scanned on TPU), scan or unroll")
flags.DEFINE_float("drop_path", 0.0, "stochastic depth rate of the last block")
flags.DEFINE_string(
    "trace", None, "write a jax.profiler trace of the timed steps to DIR (open it with XProf)"
)
flags.DEFINE_float(
    "peak_tflops", None, "per-device dense peak, for MFU (default: hcnet.measure.roofline.DEVICES)"
)
for _name in ("variant", "heat_operator", "batch", "image_size", "repeats", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.measure import bench

    shape = dict(variant=FLAGS.variant, batch=FLAGS.batch or 64, image_size=FLAGS.image_size or 224)
    common = dict(
        dtype=FLAGS.dtype,
        repeats=FLAGS.repeats or 5,
        heat_operator=FLAGS.heat_operator,
        drop_path=FLAGS.drop_path,
    )
    results = []
    for mode in FLAGS.mode:
        results.append(
            bench.measure(
                **shape,
                mode=mode,
                devices=FLAGS.devices,
                remat=FLAGS.remat,
                peak=FLAGS.peak_tflops,
                depthwise_impl=FLAGS.depthwise_impl,
                block_loop=FLAGS.block_loop,
                trace=FLAGS.trace and f"{FLAGS.trace}/{mode}",
                **common,
            )
        )
    print(bench.render(results, FLAGS.json))


if __name__ == "__main__":
    tools.run(main, cluster=True)  # on every host of a slice; hcnet/hostenv.py's malloc first
