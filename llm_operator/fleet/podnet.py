"""The pod network of the local fleet: kwok pods' IPs made reachable on this machine, and nowhere else.

kwok runs no containers, but it gives every pod an IP from its node's ``spec.podCIDR`` (each fleet cluster has a
private range of its own, see ``spec.ClusterSpec.pod_cidr``). This module serves those ranges from a network
namespace of our own:

    host ── veth <host_if> 169.254.244.1/30 ──── <ns_if> 169.254.244.2/30 ── netns <name>
    host route: <range> via 169.254.244.2             inside: ``local <range> dev lo`` (every address is "ours")

so a socket bound inside the namespace to any pod IP (``listen_in``) answers clients in the host namespace, and
the traffic never leaves the machine (the ranges are routed only into the namespace).

Guarantees:
- ``ensure`` is idempotent and converges (missing pieces are added, nothing else is touched); ``remove`` deletes
  the namespace, the veth pair (deleting one end deletes both) and the host routes, and ignores what is missing.
- Setting up needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN). Without it ``PodNetError`` says so and how to
  proceed; nothing here ever skips silently.
- ``shared`` lets overlapping users (test sessions, ``make run``) share one namespace: the first one creates it,
  the last one to leave removes it.
- Loopback (127/8) and link-local ranges are refused: the apiserver rejects them in EndpointSlices.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
DEFAULT_NAME = "llmop-pods"
IP_TIMEOUT_S = 20.0


class PodNetError(Exception):
    """The pod network cannot be set up or used; the message says why and what to do."""


@dataclass(frozen=True)
class PodNetwork:
    """One network namespace serving ``ranges``; interface names are at most 15 characters (IFNAMSIZ)."""

    ranges: tuple[str, ...]
    name: str = DEFAULT_NAME
    host_if: str = "llmop-h0"
    ns_if: str = "llmop-n0"
    link: str = "169.254.244.0/30"
    ranges_checked: tuple[ipaddress.IPv4Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ranges:
            raise ValueError("a pod network needs at least one range")
        nets = tuple(validate_pod_range(r) for r in self.ranges)
        object.__setattr__(self, "ranges", tuple(str(n) for n in nets))
        object.__setattr__(self, "ranges_checked", nets)
        for ifname in (self.host_if, self.ns_if):
            if not 0 < len(ifname) <= 15:
                raise ValueError(f"interface name {ifname!r} must have 1 to 15 characters")
        link = ipaddress.IPv4Network(self.link)
        if link.prefixlen != 30:
            raise ValueError(f"link {self.link} must be a /30 (two addresses: host and namespace)")

    @property
    def host_addr(self) -> str:
        return str(ipaddress.IPv4Network(self.link)[1])

    @property
    def ns_addr(self) -> str:
        return str(ipaddress.IPv4Network(self.link)[2])

    def contains(self, ip: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.ranges_checked)


def validate_pod_range(cidr: str) -> ipaddress.IPv4Network:
    """PURE: ``cidr`` as a network, refusing what the apiserver refuses in EndpointSlices (loopback, link-local)
    and anything not private (it would shadow real destinations of this machine)."""
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise ValueError(f"pod range {cidr!r} is not an IPv4 network ({e})") from e
    if net.is_loopback or net.is_link_local:
        raise ValueError(f"pod range {cidr}: loopback and link-local addresses are refused in EndpointSlices")
    if not net.is_private:
        raise ValueError(f"pod range {cidr} is not a private range")
    return net


# ------------------------------------------------------------------------------------------------- setup


def unavailable_reason() -> str | None:
    """None when this process can set up a pod network, else why not (for a test failure message)."""
    if os.geteuid() != 0:
        return "setting up the pod network namespace needs root (ip netns add, veth, routes); run as root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing; install iproute2"
    return None


def ensure(net: PodNetwork) -> None:
    """Create or complete the namespace, the veth pair, the addresses and the routes (idempotent)."""
    reason = unavailable_reason()
    if reason:
        raise PodNetError(reason)
    if not (NETNS_DIR / net.name).exists():
        _ip("netns", "add", net.name)
    if not _ok("link", "show", net.host_if):
        # A namespace side left behind by a half setup would make `add` fail; start that pair over.
        _ok("-n", net.name, "link", "del", net.ns_if)
        _ip("link", "add", net.host_if, "type", "veth", "peer", "name", net.ns_if)
        _ip("link", "set", net.ns_if, "netns", net.name)
    prefix = ipaddress.IPv4Network(net.link).prefixlen
    if f"{net.host_addr}/{prefix}" not in _run("-4", "-o", "addr", "show", "dev", net.host_if):
        _ip("addr", "add", f"{net.host_addr}/{prefix}", "dev", net.host_if)
    if f"{net.ns_addr}/{prefix}" not in _run("-n", net.name, "-4", "-o", "addr", "show", "dev", net.ns_if):
        _ip("-n", net.name, "addr", "add", f"{net.ns_addr}/{prefix}", "dev", net.ns_if)
    _ip("link", "set", net.host_if, "up")
    _ip("-n", net.name, "link", "set", "lo", "up")
    _ip("-n", net.name, "link", "set", net.ns_if, "up")
    for cidr in net.ranges:
        # `replace` converges: it adds the route or corrects one that points elsewhere.
        _ip("-n", net.name, "route", "replace", "local", cidr, "dev", "lo", "table", "local")
        _ip("route", "replace", cidr, "via", net.ns_addr, "dev", net.host_if)


def remove(net: PodNetwork) -> None:
    """Delete the host routes, the veth pair and the namespace; what is already gone is ignored."""
    for cidr in net.ranges:
        _ok("route", "del", cidr, "via", net.ns_addr)
    _ok("link", "del", net.host_if)
    if (NETNS_DIR / net.name).exists():
        _ok("netns", "del", net.name)


def exists(net: PodNetwork) -> bool:
    return (NETNS_DIR / net.name).exists() and _ok("link", "show", net.host_if)


@contextlib.contextmanager
def shared(net: PodNetwork, *, lock_dir: Path) -> Iterator[PodNetwork]:
    """Use ``net`` alongside other processes: ensure it on entry; on exit remove it if no one else uses it.

    Users hold a shared lock on ``<lock_dir>/<name>.users`` while inside; the one leaving tries to take it
    exclusively, and removes the namespace only if that succeeds. Setup itself is serialised on a second lock.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{net.name}.users").open("a") as users:
        fcntl.flock(users, fcntl.LOCK_SH)  # waits while a leaving user removes it
        with (lock_dir / f"{net.name}.setup").open("a") as setup:
            fcntl.flock(setup, fcntl.LOCK_EX)
            ensure(net)
            fcntl.flock(setup, fcntl.LOCK_UN)
        try:
            yield net
        finally:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # someone else still uses it
            else:
                remove(net)


# ------------------------------------------------------------------------------------------------ sockets

_libc = ctypes.CDLL(None, use_errno=True)


def listen_in(namespace: str, host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A TCP socket listening on ``host:port`` inside network namespace ``namespace``.

    A network namespace belongs to a thread, and a socket to the namespace it was created in: a short-lived
    thread enters the namespace, creates and binds the socket, and ends. The caller (in the host namespace, so
    it still reaches the fleet's apiservers on 127.0.0.1) serves it with any asyncio server. Raises OSError
    (e.g. EADDRINUSE) like ``bind`` does.
    """
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(backlog)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            result.append(sock)
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    thread = threading.Thread(target=run, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


# ----------------------------------------------------------------------------------------------- commands


def _run(*args: str) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    return res.stdout if res.returncode == 0 else ""


def _ok(*args: str) -> bool:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    return res.returncode == 0


def _ip(*args: str) -> None:
    try:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PodNetError(f"ip {' '.join(args)} failed: {e}") from e
    if res.returncode != 0:
        raise PodNetError(f"ip {' '.join(args)} failed: {res.stderr.strip() or res.returncode}")


def pod_ranges(cidrs: Sequence[str | None]) -> tuple[str, ...]:
    """PURE: the distinct ranges among ``cidrs`` (clusters without one are left out), in order."""
    out: list[str] = []
    for c in cidrs:
        if c and c not in out:
            out.append(c)
    return tuple(out)
