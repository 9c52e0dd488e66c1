"""`egress scan`'s name lists, kept validated between runs under a key made of everything they are built from.

Loading the shipped lists (`egress.policy.lists`: PyYAML imported, 137 KB composed to nodes, each of doh.yaml's
3,315 addresses parsed by `ipaddress`, then indexed by `NameLists`) was about 500 M instructions, 40 % of a one-flow
`egress scan`. `name_lists` keeps `NameLists.state` (plain JSON) in a file of the user's cache directory whose name
is the SHA-256 of: this format, the Python version, the source of every module the result depends on (the
loader, the YAML layer, the model, `NameLists`, `Category`, `ipaddress`), PyYAML's files (sources by content, the
compiled parser by name, size and time), and each list file's name and bytes. A change to any of these names
another file, so an entry built from other lists or by other code is never found, let alone read. The entry is
written only after the files validated, from the very bytes that were hashed; it carries the SHA-256 of its body
and is read only when it and its folder belong to this user and no one else may write them; anything else about
it (absent, unreadable, damaged, foreign) and the lists are loaded from the files as before. A load with problems
raises `RulesError` every time and writes nothing.

The cache is ``$EGRESS_CACHE_DIR`` (empty: no cache), else ``$XDG_CACHE_HOME/egress``, else ``~/.cache/egress``;
the folder is made (mode 0700) only inside a folder of this user's, and it keeps the last `KEPT` entries.
Only the scanner uses it; the gateway loads its lists from the files (`load_name_lists`) at every start and reload.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import ipaddress
import json
import os
import stat
import sys
from pathlib import Path
from typing import Final

from egress import shipped
from egress.detect.names import NameLists

__all__ = ["CACHE_ENV", "cache_dir", "entry_for", "name_lists"]

CACHE_ENV: Final = "EGRESS_CACHE_DIR"
FORMAT: Final = b"egress name lists, cache format 1\n"
KEPT: Final = 8
"""Entries kept in the folder; older ones are removed when a new one is written (about 140 KB each)."""
_EGRESS: Final = Path(__file__).resolve().parents[1]
_SOURCES: Final = (
    "policy/lists.py",
    "policy/listcache.py",
    "policy/yamlnodes.py",
    "policy/problems.py",
    "detect/namelist.py",
    "detect/names.py",
    "detect/base.py",
)
"""The modules whose code decides what `load_name_lists` gives (and this one, which writes and reads it)."""


def name_lists(directory: str | Path | None = None) -> NameLists:
    """`egress.policy.lists.load_name_lists(directory)`, from the cache when it holds this very load."""
    folder = Path(directory) if directory is not None else shipped.lists_dir()
    cache = cache_dir()
    paths = sorted(folder.glob("*.yaml"))
    if cache is None or not paths:
        return _load(folder)
    try:
        files = [(path, path.read_bytes()) for path in paths]
    except OSError:
        return _load(folder)  # which says which file could not be read
    entry = cache / entry_for(files)
    found = _read(entry)
    if found is not None:
        return found
    texts = [(str(path), _text(data)) for path, data in files]
    if any(text is None for _, text in texts):
        return _load(folder)  # not UTF-8: the loader's problem names the file and the byte
    from egress.policy.lists import load_texts  # PyYAML and the loader: only when the entry was not there

    lists = NameLists(load_texts((file, text) for file, text in texts if text is not None))
    _write(entry, lists)
    return lists


def cache_dir() -> Path | None:
    """Where entries are kept, or None when ``$EGRESS_CACHE_DIR`` is set empty (no cache)."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "egress"


def entry_for(files: list[tuple[Path, bytes]]) -> str:
    """The file name of the entry for list files of these names and bytes, with this code."""
    key = hashlib.sha256(FORMAT)
    key.update(sys.version.encode())
    for source in _SOURCES:
        _part(key, source.encode(), (_EGRESS / source).read_bytes())
    _part(key, b"ipaddress", Path(ipaddress.__file__).read_bytes())
    for name, data in _yaml_files():
        _part(key, name.encode(), data)
    for path, data in files:
        _part(key, path.name.encode(), data)
    return f"lists-{key.hexdigest()}.json"


def _part(key: hashlib._Hash, name: bytes, data: bytes) -> None:
    key.update(b"%d:%s%d:" % (len(name), name, len(data)))
    key.update(data)


def _yaml_files() -> list[tuple[str, bytes]]:
    """PyYAML as the key holds it: each Python source by content, any other file by name, size and time."""
    spec = importlib.util.find_spec("yaml")
    if spec is None or spec.origin is None:
        return [("yaml", b"absent")]
    found: list[tuple[str, bytes]] = []
    for path in sorted(Path(spec.origin).parent.iterdir()):
        if path.suffix == ".py":
            found.append((path.name, path.read_bytes()))
        elif path.is_file():
            info = path.stat()
            found.append((path.name, b"%d %d" % (info.st_size, info.st_mtime_ns)))
    return found


def _text(data: bytes) -> str | None:
    """``data`` as `Path.read_text(encoding="utf-8")` reads it (newlines translated), or None if not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _load(folder: Path) -> NameLists:
    from egress.policy.lists import load_name_lists

    return load_name_lists(folder)


def _private(info: os.stat_result) -> bool:
    """Owned by this user and writable by no one else: nobody else can have written it."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read(entry: Path) -> NameLists | None:
    try:
        descriptor = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(descriptor, "rb") as handle:
            if not (_private(os.fstat(handle.fileno())) and _private(os.stat(entry.parent))):
                return None
            digest, _, body = handle.read().partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            return None
        return NameLists.restored(json.loads(body))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _write(entry: Path, lists: NameLists) -> None:
    """Keep ``lists`` as ``entry`` (a whole file or none: written aside, then renamed); on any failure, nothing."""
    state = lists.state()
    if state is None:
        return
    body = json.dumps(state, separators=(",", ":")).encode()
    folder = entry.parent
    partial = folder / f".{entry.name}.{os.getpid()}"
    try:
        _make(folder)
        if not _private(os.stat(folder)):
            return
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        os.replace(partial, entry)
        _prune(folder)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def _make(folder: Path) -> None:
    """Make ``folder`` and any missing parents (mode 0700) when the nearest one that exists is this user's: not
    in another user's home (``sudo`` keeps $HOME)."""
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if missing and os.stat(folder).st_uid == os.geteuid():
        for made in reversed(missing):
            made.mkdir(mode=0o700)


def _prune(folder: Path) -> None:
    """Remove all but the `KEPT` entries written last (each set of lists and code leaves one)."""
    entries = sorted(folder.glob("lists-*.json"), key=lambda path: path.stat().st_mtime_ns, reverse=True)
    for old in entries[KEPT:]:
        old.unlink(missing_ok=True)
