"""Secrets never reach logs, reprs or displayed conninfo strings (unit level; the end-to-end canary
with the SDK's own debug log is in test_psycopg)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from databricks.sdk.logger import RoundTrip

from lakebase import _redact
from lakebase._redact import MASK, redact, register_secret, safe_conninfo
from lakebase.credentials import Credential

from .lakebase_support import Records


def jwt_like() -> str:
    return "eyJhbGciOiJFZERTQSJ9." + secrets.token_urlsafe(120) + "." + secrets.token_urlsafe(64)


@pytest.fixture
def records() -> Iterator[Records]:
    _redact.install()
    handler = Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_shapes_are_masked() -> None:
    token = jwt_like()
    assert token not in redact(f"the token is {token}")
    assert redact('{"token": "abc", "expire": "2026"}') == f'{{"token": "{MASK}", "expire": "2026"}}'
    assert redact("host=h password=s3cr3t user=u") == f"host=h password={MASK} user=u"
    assert redact("host=h password='with space' user=u") == f"host=h password={MASK} user=u"
    assert redact("postgresql://me:s3cr3t@host:5432/db") == f"postgresql://me:{MASK}@host:5432/db"
    assert redact("> * Authorization: Bearer dapi0123456789abcdef0123456789abcdef") == (
        f"> * Authorization: Bearer {MASK}")
    assert "dapi0123456789abcdef0123" not in redact("pat dapi0123456789abcdef0123456789abcdef")
    assert "dose0123456789abcdef" not in redact("secret dose0123456789abcdef01234567")


def test_ordinary_text_is_left_alone() -> None:
    for text in ("Basic authentication configured", "token_type: Bearer", "connection refused",
                 "SELECT 1", "expires in 3600s"):
        assert redact(text) == text


def test_a_registered_secret_is_masked_even_when_truncated() -> None:
    secret = "zq" + secrets.token_hex(40)  # no known shape
    register_secret(secret)
    assert secret not in redact(f"x {secret} y")
    assert secret[:20] not in redact(f"truncated: {secret[:20]}... (60 more bytes)")


def test_the_sdk_round_trip_log_of_a_credential_response_is_masked() -> None:
    """The SDK logs response bodies at DEBUG, keeping the first 96 bytes of ``token``."""
    token = jwt_like()
    response = requests.Response()
    response.status_code, response.reason = 200, "OK"
    response._content = json.dumps({"token": token, "expire_time": "2026-11-21T09:11:21Z"}).encode()
    response.request = requests.Request("POST", "https://h/api/2.0/postgres/credentials",
                                        json={"endpoint": "projects/p/branches/b/endpoints/e"}).prepare()
    logged = RoundTrip(response, debug_headers=True, debug_truncate_bytes=96).generate()
    assert token[:90] in logged  # the SDK's own output does leak it...
    cleaned = redact(logged)
    assert token[:12] not in cleaned and MASK in cleaned and "expire_time" in cleaned  # ...ours does not


def test_records_of_protected_loggers_are_scrubbed_whatever_the_handler(records: Records) -> None:
    token = jwt_like()
    logging.getLogger("databricks.sdk").debug("< %s", json.dumps({"token": token}))
    logging.getLogger("databricks.sdk.some.child.created.later").info("token=%s", token)
    logging.getLogger("psycopg.pool").warning("conninfo: host=h password=%s", token)
    logging.getLogger("lakebase.x").error("oops", exc_info=ValueError(f"password={token}"))
    assert len(records.records) == 4
    assert token[:12] not in records.text()
    assert records.text().count(MASK) >= 4


def test_other_loggers_are_not_touched(records: Records) -> None:
    logging.getLogger("myapp").info("token=%s", "visible-on-purpose")
    assert "visible-on-purpose" in records.text()


def test_the_record_factory_chains_to_a_previous_one(records: Records) -> None:
    previous = logging.getLogRecordFactory()
    seen = []

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(record.name)
        return record

    logging.setLogRecordFactory(factory)
    try:
        _redact.install()
        logging.getLogger("databricks.sdk").debug("password=%s", "hunter2-hunter2")
    finally:
        logging.setLogRecordFactory(previous)
    assert seen == ["databricks.sdk"]
    assert "hunter2" not in records.text()


def test_safe_conninfo_masks_the_password() -> None:
    text = safe_conninfo({"host": "h", "port": 5432, "user": "a b", "password": "s3cr3t",
                          "sslmode": "require"})
    assert text == f"host=h port=5432 user='a b' password={MASK} sslmode=require"


def test_a_credential_never_shows_its_token() -> None:
    token = jwt_like()
    cred = Credential.from_expiry(token, datetime.now(UTC) + timedelta(hours=1))
    for text in (repr(cred), str(cred), f"{cred}", repr([cred])):
        assert token not in text and token[:12] not in text
    assert cred.fingerprint.startswith("sha256:") and cred.fingerprint in repr(cred)
