"""Rig for link tests: a real Agent thread and a real RemoteClient over two pty pairs joined by the fault relay."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgecxr.device.link import Agent, LinkConfig, RemoteClient

from .cable import PtyPort
from .faults import FaultConfig, FaultRelay

if sys.platform == "win32":  # ptys
    pytest.skip("the link tests need ptys", allow_module_level=True)

# Short timeouts keep dead-peer tests fast: a silent peer is detected in (4 + 1) * 0.25 = 1.25 s.
FAST = LinkConfig(ack_timeout=0.25, max_retries=4)


@dataclass
class Rig:
    relay: FaultRelay
    agent: Agent
    client: RemoteClient
    store: Path
    tmp: Path
    ports: list[PtyPort] = field(default_factory=list)
    clients: list[RemoteClient] = field(default_factory=list)

    def new_client(self, config: LinkConfig | None = None) -> RemoteClient:
        """Another host process on the same cable end (the earlier one should be closed first)."""
        port = self.relay.open_b()
        self.ports.append(port)
        client = RemoteClient(port, config=config or FAST)
        self.clients.append(client)
        return client


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(faults: FaultConfig | None = None, config: LinkConfig | None = None,
             handlers: dict[str, Any] | None = None, on_file_received: Any = None,
             client_config: LinkConfig | None = None) -> Rig:
        relay = FaultRelay.pty(faults or FaultConfig()).start()
        pa, pb = relay.open_a(), relay.open_b()
        store = tmp_path / "store"
        agent = Agent(pa, store, handlers, on_file_received=on_file_received, config=config or FAST)
        agent.start()
        client = RemoteClient(pb, config=client_config or config or FAST)
        rig = Rig(relay, agent, client, store, tmp_path, [pa, pb])
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for c in [rig.client, *rig.clients]:
            c.close()
        rig.agent.stop()
        rig.relay.close()
        for p in rig.ports:
            p.close()
        assert rig.agent.error is None, f"agent crashed: {rig.agent.error!r}"
