"""The dependency versions the fast paths were tested on, and the start-up check each one runs.

A fast path reaches into private internals of faust-streaming or aiokafka. It is switched on only
when the installed distributions are inside the tested range (the same ranges as
``pyproject.toml``; a unit test keeps the two equal) and every attribute it needs exists;
otherwise it logs a WARNING that names the public-API fallback the worker uses instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from importlib import metadata

log = logging.getLogger(__name__)

# distribution: (lowest tested version, first version not tested); lower bound inclusive.
TESTED: dict[str, tuple[str, str]] = {
    "faust-streaming": ("0.15.3", "0.16"),
    "aiokafka": ("0.14.0", "0.15"),
}


def parse(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"0.15.3rc1"`` -> ``(0, 15, 3)``."""
    parts: list[int] = []
    for piece in version.split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() < len(piece):  # a pre/post/dev suffix ends the release part
            break
    return tuple(parts)


def _pad(v: tuple[int, ...], n: int = 4) -> tuple[int, ...]:
    return v + (0,) * (n - len(v))


def installed(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def in_tested_range(dist: str, version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed one) of ``dist`` is inside :data:`TESTED`."""
    version = version if version is not None else installed(dist)
    if version is None or dist not in TESTED:
        return False
    low, high = TESTED[dist]
    return _pad(parse(low)) <= _pad(parse(version)) < _pad(parse(high))


def problems(dists: Sequence[str], needs: Iterable[tuple[object, str]] = ()) -> list[str]:
    """What stops a fast path: versions outside the tested range, attributes that do not exist."""
    out: list[str] = []
    for dist in dists:
        if not in_tested_range(dist):
            low, high = TESTED.get(dist, ("?", "?"))
            out.append(f"{dist} {installed(dist)} is outside the tested range >={low},<{high}")
    for owner, attr in needs:
        if not hasattr(owner, attr):
            name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", type(owner).__name__)
            out.append(f"{name}.{attr} does not exist")
    return out


def check(name: str, fallback: str, dists: Sequence[str], needs: Iterable[tuple[object, str]] = ()) -> bool:
    """True when fast path ``name`` may run; else log a WARNING naming the ``fallback``."""
    found = problems(dists, needs)
    if found:
        log.warning("fast path %s off (%s): %s", name, "; ".join(found), fallback)
        return False
    return True
