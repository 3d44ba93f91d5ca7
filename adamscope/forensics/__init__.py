"""Forensics across checkpoints: exact gradients of consecutive pairs, per-layer diffs, moved-first.

The public surface is `adamscope.gradients`; this package holds its parts:
lockstep.py (opening two checkpoints and streaming matching tensors chunk by chunk together),
recover.py (gradients from the EMAs), gradient_tables.py (their rows and files), diff.py (relative per-layer changes and their ranking).
"""
