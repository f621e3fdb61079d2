"""Testbed configuration: one small value object plus the naming conventions teardown relies on.

Every object the testbed creates is named from ``prefix`` so that ``down`` can find it without the state file:
namespaces ``<prefix>-<class>``, server-side veth ends ``<prefix>s-<short>``, edge-side ends ``<prefix>e-<short>``
(renamed ``<prefix>0`` once inside the edge namespace), cgroups ``<cgroup_parent>/<class>``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_PREFIX = "rr"
DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_RATE = "640mbit"  # 80 MB/s line rate as in the paper; ~700mbit gives 80 MB/s of TCP payload (SPEC 9)
DEFAULT_BURST = "256kb"
DEFAULT_LATENCY = "50ms"
DEFAULT_PERIOD_US = 10_000  # CFS period; shorter than the kernel's 100 ms to cut throttling jitter (docs/testbed.md)
DEFAULT_SERVER_PORT = 50051
DEFAULT_STATE_DIR = "/run/roadrunner-testbed"
SERVER_HOST_INDEX = 1
EDGE_HOST_BASE = 10


@dataclass(frozen=True)
class TestbedConfig:
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    rate: str = DEFAULT_RATE
    burst: str = DEFAULT_BURST
    latency: str = DEFAULT_LATENCY
    period_us: int = DEFAULT_PERIOD_US
    classes: tuple[str, ...] = field(default=())  # empty: every class in classes.json
    cpu_shares: int | None = None  # weight of the whole testbed vs the rest of the host (v1 units); None: default
    state_dir: str = DEFAULT_STATE_DIR

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        if not self.prefix.isalnum() or len(self.prefix) > 4:
            raise ValueError(f"prefix must be 1-4 alphanumeric characters, got {self.prefix!r}")
        if not 1000 <= self.period_us <= 1_000_000:
            raise ValueError(f"period_us must be within 1000..1000000, got {self.period_us}")
        if self.cpu_shares is not None and self.cpu_shares < 2:  # the kernel turns 0 and 1 into 2 without a word
            raise ValueError(f"cpu_shares must be at least 2, got {self.cpu_shares}")
        ipaddress.ip_network(self.subnet)

    # --- naming conventions -------------------------------------------------------------------------------------
    def netns(self, cls: str) -> str:
        return f"{self.prefix}-{cls}"

    def server_if(self, short: str) -> str:
        return f"{self.prefix}s-{short}"

    def edge_if_root(self, short: str) -> str:
        return f"{self.prefix}e-{short}"

    @property
    def edge_if(self) -> str:
        return f"{self.prefix}0"

    @property
    def cgroup_parent(self) -> str:
        return "roadrunner" if self.prefix == DEFAULT_PREFIX else f"roadrunner-{self.prefix}"

    @property
    def state_file(self) -> str:
        return f"{self.state_dir}/{self.prefix}.json"

    # --- addresses ----------------------------------------------------------------------------------------------
    def host(self, index: int) -> str:
        net = ipaddress.ip_network(self.subnet)
        return str(net.network_address + index)

    @property
    def server_addr(self) -> str:
        return self.host(SERVER_HOST_INDEX)

    def edge_addr(self, position: int) -> str:
        return self.host(EDGE_HOST_BASE + position)
