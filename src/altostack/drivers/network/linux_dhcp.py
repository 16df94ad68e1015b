"""dnsmasq per VPC, inside the router's namespace: DHCP reservations and the VPC's DNS names.

One dnsmasq per router, daemonised by itself with a pidfile in the router's state
directory, so it outlives the agent and a new agent finds it again; it is stopped by that
PID (checked against its command line, so a recycled PID is never signalled).

What needs no restart is in files dnsmasq re-reads on SIGHUP: the reservations
(``--dhcp-hostsfile``, ``MAC,IP,name``) and the DNS names (``--addn-hosts``). Everything
else is the command line; when it changes (a subnet, the MTU, the domain) dnsmasq is
restarted, which DHCP clients do not notice (their leases stay valid).

It reads nothing of the host: no ``/etc/dnsmasq.conf``, ``/etc/resolv.conf`` or
``/etc/hosts``; it listens on the router's VPC leg only, serves only reserved addresses
(``static`` ranges) on subnets with DHCP on, and hands out the MTU (option 26), the
subnet's gateway (option 3) and a classless route (option 121) to the metadata address
through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from altostack.drivers import tools
from altostack.drivers.errors import BackendFailure
from altostack.drivers.network.base import RouterSpec
from altostack.drivers.network.linux_nat import INTERNAL

METADATA_IP = "169.254.169.254"
LEASE_SECONDS = 86400
_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class DhcpFiles:
    """Where one router's dnsmasq keeps its state."""

    directory: Path

    @property
    def pidfile(self) -> Path:
        return self.directory / "dnsmasq.pid"

    @property
    def hostsfile(self) -> Path:
        return self.directory / "dhcp-hosts"

    @property
    def names(self) -> Path:
        return self.directory / "dns-names"

    @property
    def leases(self) -> Path:
        return self.directory / "dnsmasq.leases"

    @property
    def log(self) -> Path:
        return self.directory / "dnsmasq.log"

    @property
    def argv_record(self) -> Path:
        return self.directory / "dnsmasq.argv"


def argv(spec: RouterSpec, files: DhcpFiles) -> list[str]:
    """dnsmasq's command line for the router (without the ``ip netns exec`` prefix)."""
    out = [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--interface={INTERNAL}",
        "--except-interface=lo",
        "--bind-interfaces",
        f"--pid-file={files.pidfile}",
        f"--dhcp-hostsfile={files.hostsfile}",
        f"--addn-hosts={files.names}",
        f"--dhcp-leasefile={files.leases}",
        f"--log-facility={files.log}",
        "--log-dhcp",
        "--dhcp-authoritative",
        # The state directory is the agent's; dnsmasq stays root to re-read it on SIGHUP.
        "--user=root",
        "--group=root",
        f"--domain={spec.dns_domain}",
        f"--local=/{spec.dns_domain}/",
        "--expand-hosts",
        f"--dhcp-option=option:mtu,{spec.mtu}",
    ]
    upstream: list[str] = []
    for number, subnet in enumerate(spec.subnets):
        if not subnet.dhcp:
            continue
        net = ipaddress.ip_network(subnet.cidr)
        tag = f"subnet{number}"
        gw = subnet.gateway_ip
        out += [
            f"--dhcp-range=set:{tag},{net.network_address},static,{net.netmask},{LEASE_SECONDS}",
            f"--dhcp-option=tag:{tag},option:router,{gw}",
            f"--dhcp-option=tag:{tag},option:classless-static-route,"
            f"{METADATA_IP}/32,{gw},0.0.0.0/0,{gw}",
            f"--dhcp-option=tag:{tag},option:dns-server,{gw}",
        ]
        upstream += [s for s in subnet.dns_servers if s not in upstream]
    out += [f"--server={server}" for server in upstream]
    return out


def hosts_text(spec: RouterSpec) -> str:
    return "".join(f"{h.mac},{h.ip},{h.hostname}\n" for h in spec.dhcp_hosts)


def names_text(spec: RouterSpec) -> str:
    return "".join(f"{h.ip} {h.hostname}.{spec.dns_domain} {h.hostname}\n" for h in spec.dhcp_hosts)


def wanted(spec: RouterSpec) -> bool:
    """Whether the router runs dnsmasq at all: a subnet with DHCP, or names to serve."""
    return any(s.dhcp for s in spec.subnets)


def running_pid(files: DhcpFiles) -> int | None:
    """The PID of this router's live dnsmasq, or None."""
    try:
        pid = int(files.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    marker = f"--pid-file={files.pidfile}".encode()
    return pid if marker in cmdline else None


def _write(path: Path, text: str) -> bool:
    """Replace the file atomically when its text changes; True when it changed."""
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


async def converge(spec: RouterSpec, namespace: str, files: DhcpFiles) -> None:
    """Make the router's dnsmasq serve ``spec``: start, SIGHUP, restart or stop it."""
    files.directory.mkdir(parents=True, exist_ok=True)
    if not wanted(spec):
        await stop(files)
        return
    hosts_changed = _write(files.hostsfile, hosts_text(spec))
    names_changed = _write(files.names, names_text(spec))
    command = argv(spec, files)
    pid = running_pid(files)
    if pid is not None and _write(files.argv_record, "\0".join(command)):
        await stop(files)
        pid = None
    if pid is None:
        _write(files.argv_record, "\0".join(command))
        await _start(command, namespace, files)
    elif hosts_changed or names_changed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)


async def _start(command: list[str], namespace: str, files: DhcpFiles) -> None:
    files.pidfile.unlink(missing_ok=True)
    # dnsmasq forks and the parent exits once the daemon is ready, so this returns with
    # the daemon detached and its PID in the pidfile (its stdio is closed, no pipe held).
    result = await tools.run(["ip", "netns", "exec", namespace, *command], timeout=_START_TIMEOUT)
    if result.returncode != 0 or running_pid(files) is None:
        detail = result.stderr or _tail(files.log)
        raise BackendFailure(f"dnsmasq did not start in {namespace}: {detail}")


async def stop(files: DhcpFiles) -> None:
    """Stop this router's dnsmasq by its PID; nothing running is fine."""
    pid = running_pid(files)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if running_pid(files) is None:
            break
        await asyncio.sleep(0.02)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    files.pidfile.unlink(missing_ok=True)


def _tail(path: Path) -> str:
    try:
        return path.read_text()[-500:]
    except OSError:
        return "no log"
