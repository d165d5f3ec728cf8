"""``python -m streams`` is the ``shotstream`` command."""

from streams.cli import main

main()
