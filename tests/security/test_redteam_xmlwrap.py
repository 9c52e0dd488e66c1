"""Red team 6: XML-RPC calls wrapped in another document, past `egress.detect.xmlrpc`.

xmlrpc reads a direction's XML as a lenient server does (entities, CDATA, comments, UTF-16), and the JSON readers
read JSON; neither reads an XML-RPC document that is itself a *string* of the outer document:

- ``json``: ``{"xmlrpc": "\\u003c?xml ...\\u003cmethodCall\\u003e..."}``, Go's ``json.Marshal`` default (HTML-safe
  escaping of ``<``, ``>``, ``&``): no ``<`` in the bytes, so no tag is read, and the JSON readers see a string
  value that names no method;
- ``xmltext``: ``<rpc><payload>&lt;?xml ...&lt;methodCall&gt;...</payload></rpc>``, any XML writer's output for a
  string holding markup: xmlscan decodes the references into a text node, which it does not read as XML again.

The pool unwraps with ``json.loads`` / ``ElementTree`` and reads the call with ``xmlrpc.client.loads``
(redteam_xmlwrap_kit). Rows: both wrappings on allowed.lab's plain-HTTP port by name and on the pool's address
through the network rule that expects ``[tls, http]``. Ground truth: the pool's log (``share accepted``) and the
internet-side capture. Each row fails if the bypass works.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

KIT = "redteam_xmlwrap_kit"
lab, pool = pool_fixtures("xmlwrap-pool", KIT)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("how", ("json", "xmltext"))
def test_xmlrpc_wrapped_in_a_string(lab: SecurityLab, pool: Attacker, how: str, route: str) -> None:
    name = f"xmlwrap-{how}-{route}"
    run = attempt(lab, pool, name, route, how, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
