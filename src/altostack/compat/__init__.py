"""OpenStack-compatible API facade (later issue)."""
