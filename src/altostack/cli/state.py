"""What every ``alto`` command shares: the output format, the profile, the API client.

The state rides on Click's ``ctx.obj``. Tests pass a ready :class:`CliState` (with a
mocked transport) as ``obj``, which is how commands are exercised without a server.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Annotated

import httpx
import typer
from rich.console import Console

from altostack.client import Client, ConfigurationError, Credentials, load_credentials

PIPE_WIDTH = 200


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = Annotated[
    OutputFormat | None,
    typer.Option(
        "--output",
        "-o",
        help="table, json or yaml (overrides the global --output)",
        case_sensitive=False,
        show_default=False,
    ),
]


def _console(*, stderr: bool) -> Console:
    """Markup off: API text like ``[x]`` must print as sent. Piped output gets a wide
    page (unless COLUMNS says otherwise) so tables in logs do not fold every cell."""
    # Messages on stderr never wrap mid-word: they get copied into bug reports and greps.
    console = Console(stderr=stderr, highlight=False, markup=False, soft_wrap=stderr)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


@dataclass
class CliState:
    output: OutputFormat = OutputFormat.table
    profile: str | None = None
    transport: httpx.BaseTransport | None = None
    stdout: Console = field(default_factory=lambda: _console(stderr=False))
    stderr: Console = field(default_factory=lambda: _console(stderr=True))
    _client: Client | None = None

    def credentials(self, url: str | None = None) -> Credentials:
        return load_credentials(url, profile=self.profile)

    def client(self) -> Client:
        """The client of the active profile; it must be able to authenticate."""
        if self._client is None:
            creds = self.credentials()
            if creds.auth_kind is None:
                where = f"profile {creds.profile!r}"
                raise ConfigurationError(
                    f"not logged in ({where} has no token or API key): run `alto login`, "
                    "or set ALTO_TOKEN or ALTO_ACCESS_KEY_ID/ALTO_SECRET_ACCESS_KEY"
                )
            self._client = self.make_client(creds)
        return self._client

    def make_client(self, creds: Credentials) -> Client:
        return Client(credentials=creds, transport=self.transport)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def get_state(ctx: typer.Context, output: OutputFormat | None = None) -> CliState:
    """The shared state, with a command-level ``--output`` applied."""
    state = ctx.find_root().obj
    if not isinstance(state, CliState):
        state = CliState()
        ctx.find_root().obj = state
    if output is not None:
        state.output = output
    return state
