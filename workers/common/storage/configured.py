"""The blob storage the settings configure (`BLOB_STORAGE_URL`, `BLOB_STORAGE_SYNC`, `S3_*`),
opened and checked; the gateway and blob-ingest each open one per process."""

from __future__ import annotations

from workers.common.settings import Settings
from workers.common.storage.base import BlobStorage
from workers.common.storage.filesystem_sync import parse_sync_setting
from workers.common.storage.s3 import S3Options, parse_addressing_style
from workers.common.storage.url import default_storage_url, open_storage


def storage_url(settings: Settings) -> str:
    return settings.blob_storage_url or default_storage_url(settings.state_dir)


def open_blob_storage(settings: Settings, url: str | None = None) -> BlobStorage:
    """The storage backend of `url` (default: the configured one), one per process."""
    s3_options = S3Options(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        addressing_style=parse_addressing_style(settings.s3_addressing_style),
    )
    storage = open_storage(
        url or storage_url(settings),
        s3_options=s3_options,
        sync=parse_sync_setting(settings.blob_storage_sync),
    )
    try:
        storage.check()
    except BaseException:
        storage.close()
        raise
    return storage
