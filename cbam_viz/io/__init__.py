"""Files in and out: checkpoints (ours and foreign layouts), the bundled weights and examples, images, atomic writes."""
