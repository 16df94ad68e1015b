"""The host agent: receives ensure/delete commands over the bus, calls drivers, reports."""
