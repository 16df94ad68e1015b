"""Python SDK: what the CLI, the console and the tests use to talk to the API.

    from altostack.client import Client

    with Client("http://127.0.0.1:8080") as alto:
        alto.login("system", "admin", "…")
        for op in alto.operations(state="running"):
            alto.wait_operation(op["id"], timeout=300)

The SDK only speaks HTTP: it imports nothing from the server side, so it can be installed
and used on any machine that can reach the API.
"""

from altostack.client.aio import AsyncClient
from altostack.client.base import path_of
from altostack.client.credentials import (
    Credentials,
    credentials_path,
    load_credentials,
    update_profile,
)
from altostack.client.errors import (
    AltoError,
    ApiError,
    BadRequest,
    ConfigurationError,
    Conflict,
    FieldIssue,
    NotFound,
    OperationFailed,
    PermissionDenied,
    ServerError,
    TooManyRequests,
    TransportFailure,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from altostack.client.retry import NO_RETRY, RetryPolicy
from altostack.client.sync import Client

__all__ = [
    "NO_RETRY",
    "AltoError",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ConfigurationError",
    "Conflict",
    "Credentials",
    "FieldIssue",
    "NotFound",
    "OperationFailed",
    "PermissionDenied",
    "RetryPolicy",
    "ServerError",
    "TooManyRequests",
    "TransportFailure",
    "Unauthenticated",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
    "credentials_path",
    "load_credentials",
    "path_of",
    "update_profile",
]
