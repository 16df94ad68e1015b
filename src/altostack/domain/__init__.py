"""Pure models, state machines and errors: no I/O, importable from every layer."""
