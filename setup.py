"""The one compiled module of egress: the scanner's hot path (egress/capture/_hot.c; see docs/scanner-hot-path.md).

Everything else about the package is declared in pyproject.toml. The extension is optional: where no C compiler
exists (or the build fails) setuptools says so and installs egress without it, and the scanner runs its
pure-Python twin (egress/capture/hot.py), which gives the same findings. The module carries the SHA-256 of the
source it was built from, so that a build older than the source beside it is refused (hot.py) rather than run.
"""

import hashlib
import pathlib

from setuptools import Extension, setup

SOURCE = "egress/capture/_hot.c"
digest = hashlib.sha256(pathlib.Path(__file__).with_name("egress").joinpath("capture", "_hot.c").read_bytes())

setup(
    ext_modules=[
        Extension(
            "egress.capture._hot",
            [SOURCE],
            optional=True,
            define_macros=[("HOT_SOURCE", f'"{digest.hexdigest()}"')],
            # sec + frac * scale must round as Python's two float operations do: no fused multiply-add.
            extra_compile_args=["-O2", "-ffp-contract=off"],
        )
    ]
)
