"""mitmproxy's side of a proxy worker: the only package that imports mitmproxy.

One concern per module, as mitmproxy's own tree has them: `layers` (protocol state machines of our own),
`addon` (the behaviour: decisions mapped onto layers and HTTP hooks), `server` (one worker's run loop: the front,
mitmproxy's master and the sink), `ca` (the gateway's CA). `egress.proxy.gate` and `egress.proxy.front` stay
mitmproxy-free, so the decisions are tested without it.
"""
