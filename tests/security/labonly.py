"""A guard for the attackers' forwarders: processes that dial whatever address a request names must run only inside
a lab's network namespace, never in the machine's own, where that address would be a real one (the brief's
safety rule: traffic only to loopback or to namespaces the tests created)."""

from __future__ import annotations

import os

NAMED: str = "/run/netns"
"""Where `ip netns add` mounts the named namespaces the labs create (``ip netns identify`` reads the same)."""


def refuse_outside_a_namespace() -> None:
    """Exit with a clear error unless this process runs inside one of the named namespaces (``ip netns exec``)."""
    try:
        mine = os.stat("/proc/self/ns/net")
        named = [os.stat(os.path.join(NAMED, name)) for name in os.listdir(NAMED)]
    except OSError as error:
        raise SystemExit(f"labonly: cannot tell this process's namespace ({error}); not forwarding") from error
    if not any((each.st_dev, each.st_ino) == (mine.st_dev, mine.st_ino) for each in named):
        raise SystemExit("labonly: a forwarder runs only inside a lab namespace (ip netns exec), not the machine's own")
