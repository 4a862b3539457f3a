"""An edge agent's health, on its way past the gateway: buffer depth, losses, uptime.

Besides the presence of its nodes (the router's `PresenceReport`s), an
agent's retained status carries figures the device-health board shows. Both
gateways hand each agent status to `on_agent` (the gateway role: its
InfluxDB sink's `write_agent`). A sink that fails costs the figures, never
a reading: it is counted, logged once, and the gateway goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from cityvitals.contract import AgentStatus

__all__ = ["OnAgent", "hand_on"]

log = logging.getLogger(__name__)

#: (the agent's status, when the gateway received it in ms)
OnAgent = Callable[[AgentStatus, int], Awaitable[None]]


async def hand_on(
    on_agent: OnAgent, status: AgentStatus, received_ms: int, counts: Counter[str]
) -> None:
    try:
        await on_agent(status, received_ms)
    except Exception:
        counts["agent_health_lost"] += 1
        if counts["agent_health_lost"] == 1:
            log.exception("gateway: the agent health sink failed; agents' figures are lost")
