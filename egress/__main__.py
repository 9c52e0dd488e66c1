"""``python -m egress``: the same as the ``egress`` command."""

from egress.cli import main

main()
