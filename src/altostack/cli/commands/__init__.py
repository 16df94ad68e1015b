"""One module per command group; ``altostack.cli.main`` mounts them."""
