"""Altostack: a lightweight private cloud.

The package is split into the rooms of the house plan (docs/architecture.md): ``api`` is the
HTTP door, ``services`` the use cases, ``domain`` the pure rules, ``db`` persistence, ``bus``
messaging, ``controllers`` background reconcilers, ``agent`` + ``drivers`` the host side.
"""

__version__ = "0.1.0"
