"""adamscope: post-hoc forensics of Adam optimizer state in training checkpoints."""

__version__ = "0.1.0"
