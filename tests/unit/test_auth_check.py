"""The bearer-token comparison (predictor/auth.py ``TokenCheck``), without a server."""

from __future__ import annotations

import pytest

from predictor.auth import TokenCheck

TOKEN = b"s3cr3t-t0ken"


@pytest.mark.parametrize("value", [b"Bearer s3cr3t-t0ken", "Bearer s3cr3t-t0ken", b"bearer s3cr3t-t0ken",
                                   b"BEARER s3cr3t-t0ken", b"Bearer   s3cr3t-t0ken", b"  Bearer s3cr3t-t0ken \t"])
def test_the_scheme_is_case_insensitive_and_spaces_may_repeat(value):
    """RFC 7235 section 2.1: the auth-scheme is case-insensitive, then 1*SP before the credentials."""
    assert TokenCheck(TOKEN).allows(value)


@pytest.mark.parametrize("value", [None, b"", b"Bearer", b"Bearer ", b"s3cr3t-t0ken", b"Bearer s3cr3t-t0ken2",
                                   b"Bearer S3CR3T-T0KEN", b"Basic s3cr3t-t0ken", b"Bearers3cr3t-t0ken",
                                   b"Bearer s3cr3t", b"Bearer\ts3cr3t-t0ken", "Bearer s3cr3t-t0kén",
                                   b"Bearer s3cr3t-t0ken s3cr3t-t0ken", b"Bearer  \x00s3cr3t-t0ken"])
def test_anything_else_is_refused(value):
    """The token itself is compared exactly (case and all); another scheme, a tab or extra words do not pass."""
    assert not TokenCheck(TOKEN).allows(value)
