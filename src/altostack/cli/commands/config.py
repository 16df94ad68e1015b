"""``alto config show``: this machine's server settings, secrets masked.

It reads the same sources as ``alto up`` (``ALTO_*`` variables and ``ALTO_CONFIG``), so it
shows what a server started here, now, would run with.
"""

from __future__ import annotations

import typer

from altostack.cli.output import emit_object
from altostack.cli.state import OutputOption, get_state

app = typer.Typer(help="The server-side configuration of this machine.")


@app.command()
def show(ctx: typer.Context, output: OutputOption = None) -> None:
    """Print the effective settings (from ALTO_* and ALTO_CONFIG) with secrets masked."""
    from altostack.settings import Settings

    state = get_state(ctx, output)
    emit_object(state, Settings().masked(), title="settings")
