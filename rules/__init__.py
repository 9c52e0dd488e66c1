"""The rule data that ships with egress: name lists (``lists/*.yaml``), the lab's policy and the example policy.

This folder is the data's home. The build installs it as the package ``egress.ruledata`` (pyproject.toml,
``[tool.setuptools.package-dir]``); `egress.shipped` finds it, installed or in a checkout. ``tools/`` (the list
builder) is not shipped.
"""
