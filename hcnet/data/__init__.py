"""Input: sources (TFDS, image folders, digits, synthetic), host transforms, grain loading, device
augmentation."""
