"""The web console, served by the API server (later issue)."""
