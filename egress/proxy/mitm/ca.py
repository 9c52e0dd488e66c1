"""The gateway's CA, in mitmproxy's files: made once, before any proxy worker starts.

``python -m egress.proxy.mitm.ca CONFDIR`` is what the supervisor runs (it imports mitmproxy's certificate store
only, a fraction of a worker's start-up).
"""

from __future__ import annotations

import argparse

from mitmproxy import certs, options


def ensure_ca(confdir: str) -> None:
    """Make the gateway's CA in ``confdir`` (mitmproxy's files) unless it is there. The supervisor has it made
    before it starts the workers: workers that start together and each find no CA would each make one, and every
    worker whose CA lost the race to the file would sign with a CA that sandboxes do not trust."""
    certs.CertStore.from_store(confdir, "mitmproxy", options.Options().key_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m egress.proxy.mitm.ca", description="make the gateway's CA in CONFDIR unless it is there"
    )
    parser.add_argument("confdir", metavar="CONFDIR")
    ensure_ca(parser.parse_args(argv).confdir)


if __name__ == "__main__":
    main()
