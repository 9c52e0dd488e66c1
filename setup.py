"""The compiled modules of egress: the scanner's hot path (egress/capture/_hot.c; see docs/scanner-hot-path.md) and
the front's per-connection TLS work (egress/detect/_tlsfast.c; egress/detect/tlsfast.py), the JSON-RPC reader's byte
work (egress/detect/_jsonfast.c; egress/detect/jsonfast.py), the packed detector's search (egress/detect/_packed.c;
egress/detect/packedfast.py) and binrpc's byte searches (egress/detect/_binfast.c; egress/detect/binfast.py).

Everything else about the package is declared in pyproject.toml. Each extension is optional: where no C compiler
exists (or the build fails) setuptools says so and installs egress without it, and egress runs the pure-Python
twins (egress/capture/hot.py; for _tlsfast, tls.py and tlsshape.py; for _jsonfast, jsonrpc.py; for _binfast,
binrpc.py), which give the same answers. Each module carries the SHA-256 of the source it was built from, so that a
build older than the source beside it is refused (hot.py, tlsfast.py, jsonfast.py) rather than run.
"""

import hashlib
import pathlib

from setuptools import Extension, setup

SOURCE = "egress/capture/_hot.c"
digest = hashlib.sha256(pathlib.Path(__file__).with_name("egress").joinpath("capture", "_hot.c").read_bytes())
TLSFAST = pathlib.Path(__file__).with_name("egress").joinpath("detect", "_tlsfast.c")
tlsfast = (
    [
        Extension(
            "egress.detect._tlsfast",
            ["egress/detect/_tlsfast.c"],
            optional=True,
            define_macros=[("TLSFAST_SOURCE", f'"{hashlib.sha256(TLSFAST.read_bytes()).hexdigest()}"')],
            extra_compile_args=["-O2"],
        )
    ]
    if TLSFAST.exists()  # a copy holding only the scanner's source (tests/capture/test_hot.py) builds that alone
    else []
)
JSONFAST = pathlib.Path(__file__).with_name("egress").joinpath("detect", "_jsonfast.c")
jsonfast = (
    [
        Extension(
            "egress.detect._jsonfast",
            ["egress/detect/_jsonfast.c"],
            optional=True,
            define_macros=[("JSONFAST_SOURCE", f'"{hashlib.sha256(JSONFAST.read_bytes()).hexdigest()}"')],
            extra_compile_args=["-O2"],
        )
    ]
    if JSONFAST.exists()  # as for _tlsfast: a copy holding only the scanner's source builds that alone
    else []
)
PACKED = pathlib.Path(__file__).with_name("egress").joinpath("detect", "_packed.c")
packed = (
    [
        Extension(
            "egress.detect._packed",
            ["egress/detect/_packed.c"],
            optional=True,
            define_macros=[("PACKED_SOURCE", f'"{hashlib.sha256(PACKED.read_bytes()).hexdigest()}"')],
            extra_compile_args=["-O2"],
        )
    ]
    if PACKED.exists()
    else []
)

BINFAST = pathlib.Path(__file__).with_name("egress").joinpath("detect", "_binfast.c")
binfast = (
    [
        Extension(
            "egress.detect._binfast",
            ["egress/detect/_binfast.c"],
            optional=True,
            define_macros=[("BINFAST_SOURCE", f'"{hashlib.sha256(BINFAST.read_bytes()).hexdigest()}"')],
            extra_compile_args=["-O2"],
        )
    ]
    if BINFAST.exists()
    else []
)

setup(
    ext_modules=[
        Extension(
            "egress.capture._hot",
            [SOURCE],
            optional=True,
            define_macros=[("HOT_SOURCE", f'"{digest.hexdigest()}"')],
            # sec + frac * scale must round as Python's two float operations do: no fused multiply-add.
            extra_compile_args=["-O2", "-ffp-contract=off"],
        ),
        *tlsfast,
        *jsonfast,
        *packed,
        *binfast,
    ]
)
