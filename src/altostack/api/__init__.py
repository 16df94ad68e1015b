"""The HTTP door: routers, auth, idempotency, errors, pagination. No business rules here."""
