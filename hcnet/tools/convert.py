"""Imports a reference (PyTorch) HcNet state_dict as a checkpoint that `hcnet.load` reads.

    python -m hcnet.tools.convert --from_torch=PATH --variant=T --out=DIR [--heat_operator=...] \\
        [--depths=3,8,18,3]

PATH is a `.pth`/`.pt` (needs torch), `.safetensors` or `.npz` file. The operator form is read off
the key names unless --heat_operator is given. Every key must be used and every shape must match.
"""

from absl import flags

from hcnet import tools

flags.DEFINE_string("from_torch", None, "the reference state_dict: .pth, .pt, .safetensors or .npz")
for _name in ("variant", "heat_operator", "depths", "out"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.checkpoint import save
    from hcnet.convert import convert

    tools.require_flags(from_torch=FLAGS.from_torch, out=FLAGS.out)
    model, spec = convert(
        FLAGS.from_torch,
        variant=FLAGS.variant,
        depths=tools.depths(),
        heat_operator=FLAGS.heat_operator if FLAGS["heat_operator"].present else None,
    )
    save(FLAGS.out, model, spec)
    print(
        f"wrote {FLAGS.out} (HcNet-{FLAGS.variant}, {spec['heat_operator']}, depths "
        f"{list(spec['depths'])}, "
        f"{spec['num_classes']} classes)"
    )


if __name__ == "__main__":
    tools.run(main)
