"""`python -m reelq` is the `reelq` command."""

from reelq.cli import main

main()
