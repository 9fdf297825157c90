"""Signed, server-issued request ids (services/gateway/identity.py): feedback can be checked for
origin, owner and age by any replica that shares the secret, with no shared state."""

from __future__ import annotations

import stat

from services.gateway.identity import IdCheck, RequestIds, load_secret


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_issued_ids_check_for_their_tenant_only() -> None:
    ids = RequestIds(b"s" * 32, clock=Clock())
    rid = ids.issue("tenant-a")
    assert rid.startswith("req_") and len(rid) < 64
    assert ids.issue("tenant-a") != rid  # random part
    assert ids.check(rid, "tenant-a", any_tenant=False, max_age_s=60) is IdCheck.OK
    assert ids.check(rid, "tenant-b", any_tenant=False, max_age_s=60) is IdCheck.FOREIGN
    assert ids.check(rid, "tenant-b", any_tenant=True, max_age_s=60) is IdCheck.OK  # a judge


def test_forged_altered_and_foreign_secret_ids_are_unknown() -> None:
    clock = Clock()
    ids, other = RequestIds(b"s" * 32, clock=clock), RequestIds(b"t" * 32, clock=clock)
    rid = ids.issue("a")
    for bad in [
        "SPOOFED-ID-0001",
        "req_" + "A" * 40,
        rid[:-1] + ("A" if rid[-1] != "A" else "B"),  # one character changed
        rid + "AAAA",
        "req_!!!",
        other.issue("a"),  # another gateway's secret
        "",
    ]:
        assert ids.check(bad, "a", any_tenant=True, max_age_s=60) is IdCheck.UNKNOWN, bad


def test_ids_expire_with_the_join() -> None:
    clock = Clock()
    ids = RequestIds(b"s" * 32, clock=clock)
    rid = ids.issue("a")
    clock.t += 3600
    assert ids.check(rid, "a", any_tenant=False, max_age_s=7200) is IdCheck.OK
    clock.t += 7200
    assert ids.check(rid, "a", any_tenant=False, max_age_s=7200) is IdCheck.EXPIRED


def test_replicas_sharing_the_key_file_verify_each_other(tmp_path) -> None:
    key = tmp_path / "gateway" / "id.key"
    a, b = load_secret(None, key), load_secret(None, key)
    assert a == b and len(a) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    rid = RequestIds(a).issue("t")
    assert RequestIds(b).check(rid, "t", any_tenant=False, max_age_s=60) is IdCheck.OK
    assert load_secret("configured", key) == b"configured"
