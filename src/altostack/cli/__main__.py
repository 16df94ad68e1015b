"""``python -m altostack.cli``: the same as the ``alto`` command."""

from altostack.cli.main import main

main()
