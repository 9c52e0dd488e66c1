"""The dashboard's files without a browser: every file of static/ is served with its type and the strict
Content-Security-Policy, no script turns text into markup, and the chart's category colours are the CLI's."""

from __future__ import annotations

import colorsys
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from egress.api.app import create_app
from egress.api.routes.dashboard import FILES, STATIC
from egress.cli_render import COLOURS as CLI_COLOURS
from tests.api import settings
from tests.redis_server import nowhere_url

HUES = {"red": 0, "yellow": 60, "green": 120, "cyan": 180, "blue": 240, "magenta": 300}
"""The hue of each terminal colour name the CLI uses."""


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings(nowhere_url()))) as made:
        yield made


def test_every_file_is_served_with_the_policy(client: TestClient) -> None:
    on_disk = {path.name for path in STATIC.iterdir()} - {"dashboard.html"}
    assert on_disk == set(FILES)
    for name, media_type in FILES.items():
        answer = client.get(f"/dashboard/{name}")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == media_type
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.content == (STATIC / name).read_bytes()
    page = client.get("/dashboard")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    linked = set(re.findall(r'(?:src|href)="/dashboard/([\w.-]+)"', page.text))
    assert linked == {"dashboard.js", "dashboard.css"}


def test_modules_import_only_served_files() -> None:
    for name in FILES:
        if name.endswith(".js"):
            for imported in re.findall(r'from "\./([\w.-]+)"', (STATIC / name).read_text()):
                assert imported in FILES, f"{name} imports {imported}, which is not served"


@pytest.mark.parametrize("name", [name for name in FILES if name.endswith(".js")])
def test_no_script_makes_markup_from_text(name: str) -> None:
    """Record fields come from sandboxes: the page sets them as text only (textContent, attributes)."""
    source = (STATIC / name).read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "createContextualFragment", "DOMParser"):  # fmt: skip
        assert sink not in source, f"{name} uses {sink}"


def _hue(hex_colour: str) -> float:
    red, green, blue = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hsv(red, green, blue)[0] * 360


def test_category_colours_are_the_clis() -> None:
    source = (STATIC / "charts.js").read_text()
    found = dict(
        re.findall(r'"?([\w-]+)"?: "(#[0-9a-f]{6})"', source.split("export const COLOURS = ", 1)[1].split(";")[0])
    )
    css = (STATIC / "dashboard.css").read_text()
    assert set(found) == set(CLI_COLOURS)
    for category, name in CLI_COLOURS.items():
        distance = abs((_hue(found[category]) - HUES[name] + 180) % 360 - 180)
        assert distance <= 30, f"{category} is {found[category]} in the dashboard, {name} in the CLI"
        assert f"--{category}: {found[category]};" in css  # the chips say the same as the chart
