"""The lab: network namespaces (sandbox, gateway, internet), fake internet servers, and sandbox-side attempts."""
