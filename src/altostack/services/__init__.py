"""Use cases: permission, quota and spec changes, each in one unit of work."""
