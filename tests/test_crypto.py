"""Face crops encrypted at rest (FACEDB_CROP_KEY): sealed in the database, bound to their face, and a re-index
reads them back with the key and refuses them without it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select

from embedding.embedder import compact_model_path
from embedding.errors import ImageError
from service.crypto import MAGIC, CropCipher, new_key, parse_key
from service.db.engine import Database
from service.db.models import FaceCrop
from service.errors import FacedbError
from service.runtime import build_runtime
from service.settings import Settings
from tests.test_reindex import enroll_people

PNG = b"\x89PNG\r\n\x1a\n"


def test_cipher_round_trip_and_binding() -> None:
    cipher = CropCipher(parse_key(new_key()))
    sealed = cipher.seal(7, PNG + b"pixels")
    assert sealed.startswith(MAGIC) and PNG not in sealed
    assert cipher.open(7, sealed) == PNG + b"pixels"
    assert cipher.seal(7, PNG) != cipher.seal(7, PNG)  # a fresh nonce each time
    with pytest.raises(ImageError, match="fails authentication"):
        cipher.open(8, sealed)  # copied onto another face's row
    with pytest.raises(ImageError, match="another FACEDB_CROP_KEY"):
        CropCipher(parse_key(new_key())).open(7, sealed)
    with pytest.raises(ImageError, match="not set"):
        CropCipher(None).open(7, sealed)
    assert cipher.open(7, PNG + b"old") == PNG + b"old"  # crops stored before the key was set stay readable
    assert CropCipher(None).seal(7, PNG) == PNG


@pytest.mark.parametrize("bad", ["short", "!!!not base64!!!", "QUJD"])
def test_a_bad_key_is_refused_at_startup(bad: str) -> None:
    with pytest.raises(ValidationError, match="FACEDB_CROP_KEY"):
        Settings(_env_file=None, crop_key=SecretStr(bad))


def _stored_crops(settings: Settings) -> list[FaceCrop]:
    db = Database(settings.resolved_database_url)
    try:
        with db.read() as session:
            return list(session.scalars(select(FaceCrop)))
    finally:
        db.dispose()


def test_encrypted_crops_re_index_with_the_key_only(make_settings: Callable[..., Settings]) -> None:
    key = SecretStr(new_key())
    settings = make_settings(crop_key=key)
    rt = build_runtime(settings, batching=False)
    try:
        enroll_people(rt, 3, per=2)
    finally:
        rt.close()
    crops = _stored_crops(settings)
    assert len(crops) == 6
    assert all(c.data.startswith(MAGIC) and PNG not in c.data for c in crops)

    # without the key a re-index cannot read a single crop, and says why
    rt = build_runtime(make_settings(), batching=False)
    try:
        reindexer = rt.admin.reindexer
        mv = reindexer.register(compact_model_path())
        job_id = reindexer.start_job(mv.id)
        with pytest.raises(FacedbError, match=r"crop_encrypted: 6\) \(set the FACEDB_CROP_KEY") as failed:
            reindexer.run(job_id)
        assert failed.value.code == "faces_not_reindexable"
        job = rt.admin.get_job(job_id)
        assert (job.status, job.failed) == ("failed", 6)
    finally:
        rt.close()

    # with it, every face is re-embedded and the switch happens
    rt = build_runtime(settings, batching=False)
    try:
        reindexer = rt.admin.reindexer
        progress = reindexer.run(reindexer.start_job(mv.id))
        job = rt.admin.get_job(progress.job_id)
        assert (job.done, job.failed, job.status) == (6, 0, "completed")
    finally:
        rt.close()
