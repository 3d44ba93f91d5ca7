"""`python -m adamscope` (and `torchrun -m adamscope`) entry point."""

from adamscope.cli import main

if __name__ == "__main__":
    main()
