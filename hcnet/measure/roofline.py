"""FLOPs and the fewest bytes an HcNet training step moves per image, by hand, and the floor they
set.

    python -m hcnet.tools.roofline --variant=T --image_size=224 [--batch=128] [--act_bytes=2] \\
        [--json]

FLOPs: the paper's convention (conv + linear MACs) x 2, x 3 for forward + backward.

Bytes: a tally of the tensors a training step must read or write in memory, per image, if every
elementwise op is fused into its neighbours and only the global reductions (GroupNorm's statistics,
the conductivity's average pool, the weight gradients) and the matmuls force a tensor through
memory. Per Hc-Ra block, in units of C x H x W activation elements (hidden width 4C counts 4):

    forward    x: GAP read 1, heat+residual read 1 write 1; GroupNorm stats read 1;
               fc1 (norm applied on load) read 1 write 4; GELU+depthwise read 4 write 4;
               fc2+residual read 4 + 1 write 1                                              = 23
    backward   fc2: read g 1, write dU 4, read u 4 (weight grad, same pass)                = 9
               depthwise+GELU: read dU 4, read h 4 (GELU recomputed), write dh 4           = 12
               fc1: read dh 4, write dy 1, read x1 1 (normalised again for the weight grad) = 6
               GroupNorm: reductions read dy 1 + x1 1, apply read dy 1 + x1 1 + g 1, write 1 = 6
               heat: dk reduction read g 1 + x 1, apply read g 1 write 1                   = 4
                                                                                     total = 60

Stem and downsampling layers are counted the same way (conv: read input, write output; GroupNorm
as above); the head is negligible. Parameters: the step reads the fp32 weights and writes fp32
gradients, AdamW reads weights, gradients and both moments and writes weights and moments
(36 bytes per parameter, bf16 copies included), shared by the batch. This is a floor for a fused
implementation, not what any framework achieves; it is what the "within 2x of the floor" goal means.
"""

from hcnet import nets
from hcnet.layers import conv_out_size
from hcnet.measure.count import count_macs, count_params
from hcnet.model import model_spec

# per accelerator (vendor figures): the substrings of jax's device_kind that name it (first match
# wins, in this order), dense TFLOP/s by compute dtype, HBM GB/s
DEVICES = {
    "H200": (("h200",), {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}, 4800.0),
    "H100 SXM": (("h100",), {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}, 3350.0),
    "A100 80GB": (("a100",), {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}, 2039.0),
    "L4": (("l4",), {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3}, 300.0),
    "TPU v6e": (("v6 lite",), {"bfloat16": 918.0}, 1640.0),
    "TPU v5e": (("v5 lite",), {"bfloat16": 197.0}, 819.0),
    "TPU v5p": (("v5p", "v5"), {"bfloat16": 459.0}, 2765.0),  # a v5p reports "TPU v5"
    "TPU v4": (("v4",), {"bfloat16": 275.0}, 1228.0),
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The dense peak of a device (jax's device_kind) for a compute dtype, where the table knows
    it."""
    kind = device_kind.lower()
    for names, peaks, _ in DEVICES.values():
        if any(n in kind for n in names):
            return peaks.get(dtype)
    return None


PARAM_BYTES = 36


def block_units(mlp_ratio: float = 4.0) -> tuple[float, float]:
    """(forward, backward) elements moved per block in units of C x H x W; r = mlp_ratio (23, 37 at
    4)."""
    r = mlp_ratio
    return 7 + 4 * r, 13 + 6 * r


def _sizes(image_size: int) -> list[int]:
    """H (= W) of the stem's two outputs and of the four stages."""
    s1 = conv_out_size(image_size)
    s2 = conv_out_size(s1)
    out = [s1, s2]
    for _ in range(3):
        out.append(conv_out_size(out[-1]))
    return out  # [stem conv1, stage 1, stage 2, stage 3, stage 4]


def training_bytes(spec: dict, image_size: int = 224, act_bytes: int = 2) -> dict:
    """Bytes per image of activations (by layer kind), and per step of parameters and optimizer
    state."""
    depths, dims = spec["depths"], spec["dims"]
    s = _sizes(image_size)
    mlp = spec.get("mlp_ratio", 4.0)
    units = block_units(mlp)
    blocks = sum(d * dims[i] * s[i + 1] ** 2 for i, d in enumerate(depths)) * (units[0] + units[1])

    # a conv + GroupNorm(+GELU): forward read in 1 write out 1, stats read 1; backward read dout 1 +
    # out 1 twice (norm), write d(pre-norm) 1, read it and the input for the conv grads 2, write din
    # 1
    def conv_gn(cin, hin, cout, hout):
        return 3 * cin * hin**2 + 10 * cout * hout**2

    stem = conv_gn(3, image_size, dims[0] // 2, s[0]) + conv_gn(dims[0] // 2, s[0], dims[0], s[1])
    down = sum(conv_gn(dims[i], s[i + 1], dims[i + 1], s[i + 2]) for i in range(3))
    return {"blocks": blocks * act_bytes, "stem": stem * act_bytes, "downsample": down * act_bytes}


def bytes_per_image(
    spec: dict, image_size: int = 224, batch: int = 128, act_bytes: int = 2
) -> float | None:
    """The fewest bytes a training step of the classifier `spec` moves per square image:
    activations, and the parameters and optimizer state shared by the batch. None for a network this
    model does not describe (one with a decoder)."""
    if "decoder" in spec:
        return None
    acts = sum(training_bytes(spec, image_size, act_bytes).values())
    return acts + PARAM_BYTES * count_params(nets.abstract(spec)) / batch


def estimate(
    variant: str = "T", image_size: int = 224, batch: int = 128, act_bytes: int = 2
) -> dict:
    spec = model_spec(variant)
    macs = count_macs(spec, image_size)
    params = count_params(nets.abstract(spec))
    acts = training_bytes(spec, image_size, act_bytes)
    per_image = bytes_per_image(spec, image_size, batch, act_bytes)
    flops = 6.0 * macs
    floors = {
        name: {
            "compute_img_s": peak * 1e12 / flops,
            "memory_img_s": bw * 1e9 / per_image,
            "floor_img_s": min(peak * 1e12 / flops, bw * 1e9 / per_image),
            "bound": "memory" if bw * 1e9 / per_image < peak * 1e12 / flops else "compute",
        }
        for name, (_, peaks, bw) in DEVICES.items()
        for peak in [peaks["bfloat16"]]
    }
    return {
        "variant": variant,
        "image_size": image_size,
        "batch": batch,
        "act_bytes": act_bytes,
        "params": params,
        "macs": macs,
        "train_flops_per_image": flops,
        "bytes_per_image": per_image,
        "activation_bytes": acts,
        "param_bytes_per_step": PARAM_BYTES * params,
        "arithmetic_intensity": flops / per_image,
        "devices": floors,
    }
