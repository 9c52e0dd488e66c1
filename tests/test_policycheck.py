"""Tests for egress.policycheck: `egress rules check` runs apply's steps (load, render, nft -c) and stops where
apply would; the kernel's step is a seam the tests replace (and, as root, the real ``nft -c``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress.policycheck import check_file, kernel_check

ROOT = Path(__file__).resolve().parents[1]
GOOD = "version: 1\nsandboxes:\n  a:\n    sources: [10.0.0.0/24]\n    mode: report\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_a_valid_file_is_rendered_and_handed_to_the_kernel(tmp_path: Path) -> None:
    scripts: list[str] = []

    def kernel(script: str) -> None:
        scripts.append(script)

    checked = check_file(write(tmp_path, GOOD), frozenset(), kernel)
    assert checked.ok and checked.kernel == "checked" and checked.policy is not None
    assert len(scripts) == 1 and "table inet egress {" in scripts[0] and "src4_a" in scripts[0]
    assert [w.message.split(":")[0] for w in checked.warnings] == ["sandboxes.a.mode"]


def test_a_table_the_kernel_refuses_is_an_error(tmp_path: Path) -> None:
    checked = check_file(write(tmp_path, GOOD), frozenset(), lambda script: "Error: syntax error")
    assert not checked.ok and checked.kernel == "refused"
    assert str(checked.errors[0]) == (
        f"{tmp_path / 'policy.yaml'}:1: nftables: the rendered table does not pass `nft -c`: Error: syntax error"
    )


def test_an_invalid_file_never_reaches_the_renderer(tmp_path: Path) -> None:
    called: list[str] = []

    def kernel(script: str) -> None:
        called.append(script)

    checked = check_file(write(tmp_path, "version: 2\n"), frozenset(), kernel)
    assert not checked.ok and checked.kernel == "not rendered" and checked.policy is None and called == []


def test_without_a_kernel_the_skip_is_said(tmp_path: Path) -> None:
    checked = check_file(write(tmp_path, GOOD), frozenset(), None, "no nft binary on this host")
    assert checked.ok and checked.kernel == "skipped: no nft binary on this host"


def test_no_nft_binary_means_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("egress.nft.runner.NFT", "egress-no-such-nft")
    check, why = kernel_check()
    assert check is None and why == "no nft binary on this host"


@pytest.mark.root
@pytest.mark.parametrize("path", sorted((ROOT / "rules").glob("*.yaml")), ids=lambda path: path.name)
def test_the_shipped_policies_pass_the_real_nft_check(path: Path) -> None:
    check, why = kernel_check()
    assert check is not None, why
    checked = check_file(path, frozenset(), check)
    assert checked.ok and checked.kernel == "checked", checked.errors


@pytest.mark.root
def test_the_real_nft_check_refuses_a_broken_table(tmp_path: Path) -> None:
    check, why = kernel_check()
    assert check is not None, why
    complaint = check("table inet egress {\n\tchain c { ip saddr 10.0.0.0/33 accept; }\n}\n")
    assert complaint is not None and "Error" in complaint
