"""Serving a trained network: predictions (arrays in, arrays out), figures, and exports."""
