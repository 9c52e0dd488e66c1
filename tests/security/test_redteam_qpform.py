"""Red team 6: a pool's JSON-RPC calls as a multipart form whose fields carry a Content-Transfer-Encoding.

`egress.detect.rpcparams` (red team 5's fix) reads a ``multipart/form-data`` body's fields as a form parser does,
percent escapes and HTML references undone, but not a part's own ``Content-Transfer-Encoding`` (RFC 2045 §6):
Go's ``mime/multipart`` decodes a ``quoted-printable`` part transparently (``Request.FormValue`` returns the
decoded text), and Python's ``email`` parser decodes ``quoted-printable`` and ``base64`` parts
(``get_payload(decode=True)``), so ``method`` = ``=6D=69=6E=69=6E=67=2E=73=75=62=6D=69=74`` is ``mining.submit``
to the pool (redteam_qpform_kit: the pool reads the form with the ``email`` parser).

The same parsers read a part's name as an RFC 2231 extended parameter (``name*=utf-8''%6D%65%74%68%6F%64`` is
``method``, RFC 7578 §4.2 names the form), which rpcparams' ``name="..."`` match does not see: the field is
dropped, and ``method=mining.submit`` in plain text reaches the pool unread.

And the body's framing as those parsers take it: lines ended by LF alone (``lf``: rpcparams splits a part's
head from its content at ``\r\n\r\n`` only), and a ``boundary = "XB"`` parameter with spaces around its ``=``
(``spaced``: rpcparams' boundary match fails, the body is read as no form).

The fix (rpcparams reads a multipart body with the ``email`` parser too) is tried past by the rows ``utf16`` (a
part's content UTF-16 text, base64, ``charset=utf-16``), ``nested`` (each field a ``multipart/mixed`` part holding
a quoted-printable part), ``trailing`` (a boundary ``"XB "`` with a trailing space) and ``folded`` (a part's
``Content-Disposition`` folded over two lines); all held when written.

Rows: ``quoted-printable``, ``base64``, ``rfc2231``, ``lf``, ``spaced`` and the four variants, on
allowed.lab's plain-HTTP port by name (the
front's fast path and mitmproxy read the body) and on the pool's address through the network rule that expects
``[tls, http]``.
Ground truth: the pool's log (``share accepted``) and the internet-side capture. Each row fails if the bypass
works.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

KIT = "redteam_qpform_kit"
lab, pool = pool_fixtures("qpform-pool", KIT)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize(
    "cte", ("quoted-printable", "base64", "rfc2231", "lf", "spaced", "utf16", "nested", "trailing", "folded")
)
def test_stratum_in_coded_multipart_fields(lab: SecurityLab, pool: Attacker, cte: str, route: str) -> None:
    name = f"qpform-{cte}-{route}"
    run = attempt(lab, pool, name, route, cte, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
