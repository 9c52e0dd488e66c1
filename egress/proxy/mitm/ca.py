"""The gateway's CA, in mitmproxy's files: made once, before any proxy worker starts."""

from __future__ import annotations

from mitmproxy import certs, options


def ensure_ca(confdir: str) -> None:
    """Make the gateway's CA in ``confdir`` (mitmproxy's files) unless it is there. The supervisor has it made
    before it starts the workers: workers that start together and each find no CA would each make one, and every
    worker whose CA lost the race to the file would sign with a CA that sandboxes do not trust."""
    certs.CertStore.from_store(confdir, "mitmproxy", options.Options().key_size)
