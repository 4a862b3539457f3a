"""Ports for servers the tests start, taken where nothing else will take them."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A port P with P and P+1 free, below the kernel's ephemeral range.

    Servers here are stopped and started again on the same port, and Kafka's
    controller listens on P+1. A port from the ephemeral range can meanwhile
    be taken as the local end of any client connection (seen: "Socket server
    failed to bind to 127.0.0.1:55818: Address already in use"); ports below
    the range are never handed out that way.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()  # unseeded on purpose: parallel runs must not pick alike
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low - 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two adjacent free ports below the ephemeral range")
