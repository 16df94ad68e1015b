"""Python SDK: what the CLI, the console and the tests use to talk to the API."""
