"""`python -m dfq.evaluate`: see `dfq.evaluate.cli`."""

from dfq.evaluate.cli import main

main()
