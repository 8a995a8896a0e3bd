"""Training: the forward step + loss seam (step.py), the loop, optimizer, checkpoints."""
