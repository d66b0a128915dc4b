"""``python -m lookalike.cli ARGS``."""

from . import main

main()
