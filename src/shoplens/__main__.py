"""``python -m shoplens`` (also ``torchrun -m shoplens train ...`` for DDP training)."""

from shoplens.cli import main

main()
