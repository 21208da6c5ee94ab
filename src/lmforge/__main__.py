"""`python -m lmforge` is the `lmforge` command (torchrun launches it this way)."""

from lmforge.cli import main

main()
