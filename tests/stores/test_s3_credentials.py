"""A bucket with no credentials configured says so (issue 15), not an instance-metadata error."""

from __future__ import annotations

import pytest

from safekeeper.errors import PermanentStoreError
from safekeeper.stores.s3 import S3Store
from tests.servers import S3Server


@pytest.mark.s3
def test_missing_credentials_are_named(
    moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    store = S3Store.from_url(f"s3://{moto_server.make_bucket()}/x", endpoint=moto_server.endpoint)
    with pytest.raises(PermanentStoreError, match="no credentials for the bucket") as caught:
        store.stat("k")
    assert "169.254" not in str(caught.value)
    assert store.url in str(caught.value)
