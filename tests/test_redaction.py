"""Secrets never survive into an excerpt."""

from __future__ import annotations

from incident_fsm.remediation.actions.redaction import excerpt, redact


def test_known_values_and_credential_patterns_are_masked() -> None:
    text = ("Authorization: Bearer abc.def.ghi key=sk_live_123 password: hunter2 "
            "url?token=t0k3n&x=1 the api_key=\"quoted-secret\" and my-known-secret")
    out = redact(text, ["my-known-secret", "ab"])
    for secret in ("abc.def.ghi", "sk_live_123", "hunter2", "t0k3n", "quoted-secret",
                   "my-known-secret"):
        assert secret not in out
    assert redact("sent Bearer xyz.123") == "sent Bearer ***"
    assert "&x=1" in out  # only the secret part goes
    assert "the" in out  # a too-short "secret" does not mangle the text


def test_excerpt_keeps_the_end_bounded_and_redacts_before_cutting() -> None:
    secret = "s3cr3t-value-that-is-long"
    data = ("x" * 5000 + secret).encode()
    out = excerpt(data, [secret], limit=100)
    assert len(out) == 100
    assert out.endswith("***")
    assert secret[:10] not in out
    assert excerpt(b"\xff\xfe bad bytes") == "�� bad bytes"
