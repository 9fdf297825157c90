"""What promoting or swapping in a router version requires, shared by the operator commands on
both sides (``switchyard router promote`` in training, the replicas that follow an alias in the gateway):
a registered version carries its gate record in these tags, and the artefact must verify here.
"""

from __future__ import annotations

from collections.abc import Mapping

# The gate record of a registered router version (written by ``training.registry``).
GATE_TAG, GATE_KIND_TAG, GATE_REASONS_TAG = "gate", "gate_kind", "gate_reasons"

NO_GATE_RECORD = (
    "has no gate record (only registered versions, models:/NAME/N or models:/NAME@ALIAS, carry one)"
)


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None] | None:
    """``models:/NAME/VERSION`` → (NAME, VERSION, None); ``models:/NAME@ALIAS`` → (NAME, None,
    ALIAS); anything else (a path, ``runs:/``) → None."""
    if not ref.startswith("models:/"):
        return None
    rest = ref[len("models:/") :].strip("/")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        return (name, None, alias) if name and alias else None
    name, _, version = rest.rpartition("/")
    return (name, version, None) if name and version.isdigit() else None


def gate_problem(tags: Mapping[str, str] | None) -> str | None:
    """Why a version with these tags has no passed gate (None: it has one)."""
    tags = tags or {}
    if tags.get(GATE_TAG) == "passed":
        return None
    why = f": {tags[GATE_REASONS_TAG]}" if tags.get(GATE_REASONS_TAG) else ""
    state = f"gate {tags[GATE_TAG]}" if tags.get(GATE_TAG) else "no gate record"
    return f"has no passed gate ({state}{why})"


def verify(ref: str, tracking_uri: str) -> tuple[str | None, str | None]:
    """Download, load (content hashes checked) and smoke-check the router behind ``ref``: its
    version, or the reason it fails verification."""
    from .artifact import RouterLoadError, load_router, smoke_check

    try:
        router = load_router(ref, tracking_uri=tracking_uri)
        smoke_check(router)
    except RouterLoadError as exc:
        return None, f"fails verification: {exc}"
    except Exception as exc:  # noqa: BLE001 - any failure to load is a failed verification
        return None, f"fails verification: {type(exc).__name__}: {exc}"
    return router.version, None
