"""Message bus: events (fan-out) and commands (request/reply) between processes.

``memory://`` is the in-process asyncio bus of the all-in-one; ``nats://`` (JetStream,
``bus/nats.py``) carries events and commands between the processes of a cluster.
Subjects are dot-separated, and subscriptions accept NATS-style wildcards: ``*`` is one
token, ``>`` the rest.
"""

from altostack.bus.base import Bus, Handler, Message, Subscription, connect

__all__ = ["Bus", "Handler", "Message", "Subscription", "connect"]
