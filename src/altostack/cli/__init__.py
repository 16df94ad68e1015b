"""The ``alto`` command."""
