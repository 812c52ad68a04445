"""The PyTorch statement of HcNet and of the reference's training step, its parity fixtures and the
learning-parity benchmark: outside the installed package, run from the repository root (needs
torch)."""
