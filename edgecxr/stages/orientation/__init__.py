"""Training and evaluation of the orientation gate (runtime/orientation.py): self-supervised from the
`train` X-rays, chosen on `val`, reported on `test`."""
