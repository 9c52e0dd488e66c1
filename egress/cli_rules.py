"""``egress rules`` commands beyond ``check`` (which lives in egress/cli.py): ``diff``.

Registered on the ``rules`` group in egress/cli.py with one line each; the work is in `egress.policy.diff`.
"""

from __future__ import annotations

import json
import sys

import click

EXIT_SAME = 0
EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2


@click.command("diff")
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: grouped by sandbox, + added, - removed, ~ changed; json: one document with every change.",
)
def rules_diff(old: str, new: str, output: str) -> None:
    """What changes from policy OLD to policy NEW: sandboxes added and removed; per sandbox the hosts, networks,
    sources, decrypt and upgrade entries added or removed, mode, interface, any_source, detector actions, DNS
    limits and the quarantine rule changed; retention and on_apply.

    Both files are validated first (as `egress rules check` does, without nft). Exit status 0 when they allow the
    same, 1 when they differ, 2 when a file does not validate (its errors are printed).
    """
    from egress.policy.diff import as_json, diff, format_text
    from egress.policy.loader import RulesError, format_problems, load_policy

    policies = []
    failed = False
    for path in (old, new):
        try:
            policies.append(load_policy(path))
        except RulesError as error:
            click.echo(format_problems(error.problems), err=True)
            failed = True
    if failed:
        sys.exit(EXIT_TROUBLE)
    changes = diff(policies[0], policies[1])
    if output == "json":
        click.echo(json.dumps(as_json(changes, old, new), indent=2))
    else:
        click.echo(format_text(changes, old, new), nl=False)
    sys.exit(EXIT_DIFFERENT if changes else EXIT_SAME)
