"""ALTO1-HMAC-SHA256: how an API key signs a request (see API.md, "API keys").

This module is the single definition of the wire format for both ends: the SDK signs with
it and the API server verifies with it. It therefore imports nothing but the standard
library, so the server can depend on it without depending on the SDK (httpx and friends),
and a client in another language can be checked against the same few pure functions.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

ALGORITHM = "ALTO1-HMAC-SHA256"
MAX_CLOCK_SKEW_SECONDS = 300
EMPTY_BODY_HASH = hashlib.sha256(b"").hexdigest()

_HEADER = re.compile(
    r"^ALTO1-HMAC-SHA256\s+"
    r"Credential=(?P<key_id>[^,\s]+),\s*"
    r"Timestamp=(?P<timestamp>\d{1,12}),\s*"
    r"Signature=(?P<signature>[0-9a-fA-F]{64})\s*$"
)


class SignatureError(ValueError):
    """The request's signature cannot be accepted; the message says why."""


@dataclass(frozen=True)
class SignedHeader:
    """The three fields of an ``Authorization: ALTO1-HMAC-SHA256 …`` header."""

    key_id: str
    timestamp: int
    signature: str


def percent_encode(text: str) -> str:
    """RFC 3986 encoding of UTF-8 text; only A-Z a-z 0-9 - _ . ~ stay as they are.

    ``quote`` with no extra safe characters keeps exactly the unreserved set (``~``
    included since Python 3.7) and writes upper-case hex, which is what both ends need
    to agree on byte for byte.
    """
    return quote(text, safe="")


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Each pair encoded as ``k=v``, sorted as strings, joined by ``&``.

    Repeated keys stay as separate pairs, so ``a=2&a=1`` and ``a=1&a=2`` sign alike.
    """
    return "&".join(sorted(f"{percent_encode(k)}={percent_encode(v)}" for k, v in pairs))


def canonical_query_string(raw: str | bytes) -> str:
    """The canonical form of a query string as it appears on the wire (no ``?``).

    Both ends decode the raw query the same way (``+`` is a space, a key without ``=``
    has an empty value) before re-encoding, so how a client library chose to escape its
    parameters does not matter.
    """
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    return canonical_query(parse_qsl(text, keep_blank_values=True))


def body_hash(body: bytes) -> str:
    """Hex SHA-256 of the raw body bytes (of ``b""`` when there is no body)."""
    return hashlib.sha256(body).hexdigest()


def string_to_sign(
    timestamp: int | str, method: str, path: str, canonical_qs: str, payload_hash: str
) -> str:
    """The exact text whose HMAC is the signature; ``path`` is as sent on the wire."""
    return "\n".join([ALGORITHM, str(timestamp), method.upper(), path, canonical_qs, payload_hash])


def sign(secret: str | bytes, text: str) -> str:
    """Hex HMAC-SHA256 of ``text`` (UTF-8) keyed with the secret access key."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def request_signature(
    secret: str | bytes,
    *,
    timestamp: int,
    method: str,
    path: str,
    query: str | bytes,
    body: bytes,
) -> str:
    """The signature of one request, from its parts as they travel."""
    text = string_to_sign(timestamp, method, path, canonical_query_string(query), body_hash(body))
    return sign(secret, text)


def authorization_header(
    key_id: str,
    secret: str | bytes,
    *,
    timestamp: int,
    method: str,
    path: str,
    query: str | bytes = "",
    body: bytes = b"",
) -> str:
    """The ``Authorization`` header value for a request signed with an API key."""
    signature = request_signature(
        secret, timestamp=timestamp, method=method, path=path, query=query, body=body
    )
    return f"{ALGORITHM} Credential={key_id}, Timestamp={timestamp}, Signature={signature}"


def parse_authorization(header: str) -> SignedHeader:
    """Split a signed ``Authorization`` header into its fields, or say what is wrong."""
    match = _HEADER.match(header.strip())
    if match is None:
        raise SignatureError(
            f"malformed {ALGORITHM} Authorization header; expected "
            f"'{ALGORITHM} Credential=<key id>, Timestamp=<unix seconds>, Signature=<hex>'"
        )
    return SignedHeader(
        key_id=match["key_id"],
        timestamp=int(match["timestamp"]),
        signature=match["signature"].lower(),
    )


def verify(
    secret: str | bytes,
    signed: SignedHeader,
    *,
    method: str,
    path: str,
    query: str | bytes,
    body: bytes,
    now: float,
    max_skew: int = MAX_CLOCK_SKEW_SECONDS,
) -> None:
    """Accept the request or raise :class:`SignatureError` with a reason a person can act on.

    The clock check comes first because a skewed clock is the usual cause of a good key
    failing, and saying so saves an afternoon; the comparison is constant-time.
    """
    skew = signed.timestamp - now
    if abs(skew) > max_skew:
        raise SignatureError(
            f"request timestamp is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
            f"the server clock (at most {max_skew} s allowed); check the client's clock"
        )
    expected = request_signature(
        secret, timestamp=signed.timestamp, method=method, path=path, query=query, body=body
    )
    if not hmac.compare_digest(expected, signed.signature):
        raise SignatureError(
            "signature does not match; sign method, path, sorted query and body hash "
            "with the secret access key as API.md describes"
        )
