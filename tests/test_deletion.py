"""Deleting a face or an identity removes its biometric data everywhere: the database rows (face, templates,
crop), the live index and the next snapshot."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from index.gallery import GalleryIndex
from service.db.engine import Database
from service.settings import Settings
from tests.conftest import SYNTHETIC_ENROL, admin_client, image_bytes

G = "/v1/galleries/default"


def _rows(db: Database, table: str, face_ids: list[int]) -> int:
    with db.read() as session:
        ids = ",".join(str(int(f)) for f in face_ids)
        column = "id" if table == "faces" else "face_id"
        return int(session.execute(text(f"SELECT count(*) FROM {table} WHERE {column} IN ({ids})")).scalar_one())


def _default_gallery_id(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(text("SELECT id FROM galleries WHERE name = 'default'")).scalar_one())


def _snapshot_faces(settings: Settings) -> set[int]:
    faces: set[int] = set()
    for manifest in Path(settings.resolved_index_dir).glob("*/gallery-*/manifest.json"):
        index, _ = GalleryIndex.load(manifest.parent)
        faces |= set(index.face_ids().tolist())
    return faces


def test_deleted_faces_leave_no_biometric_data(settings: Settings) -> None:
    db = Database(settings.resolved_database_url)
    try:
        with admin_client(settings) as c:
            person = c.post(f"{G}/identities", json={"external_id": "p"}).json()["id"]
            files = [("image", (f"{i}.png", image_bytes(i), "image/png")) for i in range(3)]
            faces = [
                a["face_id"]
                for a in c.post(f"{G}/identities/{person}/faces", files=files, data=SYNTHETIC_ENROL).json()["accepted"]
            ]
            assert all(_rows(db, t, faces) == 3 for t in ("faces", "templates", "face_crops"))
            service = c.app.state.runtime.service  # type: ignore[attr-defined]
            service.indexes.save_snapshots()
            assert set(faces) <= _snapshot_faces(settings)

            assert c.delete(f"{G}/identities/{person}/faces/{faces[0]}").status_code == 204
            assert all(_rows(db, t, faces[:1]) == 0 for t in ("faces", "templates", "face_crops"))
            gallery = c.get(f"{G}").json()
            assert gallery["face_count"] == 2
            live = set(service.indexes.face_ids(_default_gallery_id(db)).tolist())
            assert faces[0] not in live and set(faces[1:]) <= live
            service.indexes.save_snapshots()
            assert faces[0] not in _snapshot_faces(settings)

            assert c.delete(f"{G}/identities/{person}").status_code == 204
            assert all(_rows(db, t, faces) == 0 for t in ("faces", "templates", "face_crops"))
            assert not set(faces) & set(service.indexes.face_ids(_default_gallery_id(db)).tolist())
        # the shutdown snapshot holds none of them either
        assert not set(faces) & _snapshot_faces(settings)
    finally:
        db.dispose()
