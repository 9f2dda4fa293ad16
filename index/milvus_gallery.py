"""Identity-level face search whose state lives in Milvus, so several service processes or machines share one index.

`MilvusGallery` is a drop-in for `index.gallery.GalleryIndex`: the same search semantics, numpy in and numpy out,
but the faces (and, for ``identity_score="mean"``, the identity means) are rows of Milvus collections reached through
pymilvus's `MilvusClient`: a milvus-lite local file (``"/path/gallery.db"``) in tests, a Milvus cluster URI
(``"http://host:19530"``) in production.

Collections, per gallery and model (``key`` = `model_key` with every character outside ``[A-Za-z0-9_]`` replaced by
``_``, truncated to 16 characters):

- ``facedb_g{gallery_id}_{key}``: one row per face: ``face_id`` INT64 primary key, ``identity_id`` INT64, ``vector``
  FLOAT_VECTOR(dim).
- ``facedb_g{gallery_id}_{key}_means`` (``identity_score="mean"``): one row per identity: ``identity_id`` INT64 primary
  key, ``vector`` = the normalised mean of that identity's faces.
- ``facedb_state`` (shared by all galleries): one row per faces collection: ``key`` VARCHAR primary key = the faces
  collection name, ``model_key`` (the full key: a different model whose key shares the 16-character prefix is refused),
  ``dim``, ``seq`` (the catch-up watermark, `last_seq`) and a dummy 2-d ``vector`` (Milvus requires a vector field).

Every vector field has a **FLAT** index (exact brute-force search; it exists on Milvus servers and in milvus-lite) with
the inner-product (IP) metric, so results are exact, like `GalleryIndex`'s. Every collection is created with, and every
search and query asks for, ``consistency_level="Strong"``: a write is visible to the next search from any client.

pymilvus is imported lazily: ``import index`` works without it, and only this module needs it
(``pip install 'facedb[milvus]'``). Failures of Milvus (unreachable, an RPC error, a reply or stored state that does not
add up) surface as `index.base.IndexCorruptError` wrapping the pymilvus exception; bad arguments raise ValueError before
anything is written.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from index.base import IndexCorruptError, as_ids, as_vectors, check_k, check_parts, unit_means
from index.gallery import Hit, IdentityScore

__all__ = ["INDEX_TYPE", "MAX_TOPK", "STATE_COLLECTION", "MilvusGallery", "collection_names"]

MAX_TOPK = 16384
"""Milvus's upper bound on a search's topk (and on a query's offset + limit); `MilvusGallery.search` never asks more."""
STATE_COLLECTION = "facedb_state"
"""The collection holding each gallery's watermark and model key."""
INDEX_TYPE = "FLAT"
"""Exact (brute-force) vector index, so search results match `GalleryIndex`'s."""

_METRIC = "IP"
_CONSISTENCY = "Strong"
_VECTOR = "vector"
_FILTER_CHUNK = 1024  # ids per `field in [...]` filter (and per delete)
_IDENTITY_CHUNK = 256  # identities per query that returns all their face vectors
_WRITE_CHUNK = 2048  # rows per upsert
_RESULT_BUDGET = 1 << 20  # queries x limit per search request
_ITER_BATCH = 4096  # rows per page of a full scan
_STATE_DIM = 2
_KEY_CHARS = 16
_MODEL_KEY_MAX = 4096
_NAME_MAX = 512

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


def collection_names(gallery_id: int, model_key: str) -> tuple[str, str]:
    """(faces collection, identity-means collection) names for a gallery and model key."""
    key = re.sub(r"[^A-Za-z0-9_]", "_", model_key)[:_KEY_CHARS]
    faces = f"facedb_g{gallery_id}_{key}"
    return faces, f"{faces}_means"


class _ClosedError(RuntimeError):
    """A method was called after `MilvusGallery.close`."""


@contextmanager
def _rpc(what: str) -> Iterator[None]:
    """Turn any failure of Milvus (or of reading its reply) inside the block into IndexCorruptError."""
    try:
        yield
    except (IndexCorruptError, _ClosedError):
        raise
    except Exception as exc:
        raise IndexCorruptError(f"Milvus {what} failed: {type(exc).__name__}: {exc}") from exc


def _import_pymilvus() -> Any:
    try:
        import pymilvus  # noqa: PLC0415  (optional dependency: imported only when a MilvusGallery is made)
    except ImportError as exc:
        raise ImportError(
            "MilvusGallery needs pymilvus (and milvus-lite for local files): pip install 'facedb[milvus]'"
        ) from exc
    return pymilvus


def _in_filter(field: str, ids: I64) -> str:
    return f"{field} in [{','.join(map(str, ids.tolist()))}]"


def _chunks(ids: I64, size: int) -> Iterator[I64]:
    for start in range(0, ids.size, size):
        yield ids[start : start + size]


def _int(value: Any, what: str) -> int:
    """An int field of a Milvus reply; IndexCorruptError (via _rpc) if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise IndexCorruptError(f"Milvus returned a non-integer {what}: {value!r}")
    return int(value)


class MilvusGallery:
    """Faces keyed by face id (int64 >= 0), each belonging to an identity (int64 >= 0), stored in Milvus.

    A drop-in for `GalleryIndex` (same `search` results, same shapes) with these differences:

    - `add` is an **upsert**: re-adding a present face id overwrites it (it may even move to another identity), so
      re-applying the same add changes nothing. That is what restart-safe catch-up from a change log needs, together
      with the `last_seq` / `set_last_seq` watermark stored beside the collections.
    - There is no save/load: the state is in Milvus. `drop` deletes this gallery's collections and watermark.
    - Milvus caps a search at `MAX_TOPK` (16384) results, so a "best" search fetches at most 16384 faces per query:
      when the best 16384 faces of a query cover fewer than k distinct identities, only those are returned (still
      the true top identities, in order, with their best faces; `GalleryIndex` would keep fetching and return k).
      A "mean" search returns at most 16384 identities per query.
    - With ``identity_score="mean"`` the means are recomputed, on every change, from the touched identities' faces as
      stored in Milvus with the change applied (never updated incrementally, so they do not drift) and written
      *before* the faces change: replaying a change after a crash recomputes the same means, so they converge.
      An instance with ``identity_score="best"`` also keeps the means up to date whenever the means collection
      exists, so processes may mix modes; `rebuild_means` recomputes all of them.

    Thread safety: searches run concurrently; this object's writes are serialised by a lock. Writers in several
    processes may write different identities concurrently; two processes changing the *same* identity at the same
    moment may leave its mean computed from one of the two states until the next change to it (or `rebuild_means`):
    feed each gallery's changes through one writer (the change-log consumer) when that matters.
    """

    def __init__(
        self,
        uri: str,
        *,
        gallery_id: int,
        model_key: str,
        dim: int,
        identity_score: IdentityScore = "best",
        token: str = "",
        timeout: float | None = 30.0,
        mean_parts: Sequence[int] | None = None,
    ) -> None:
        """Connect to Milvus at `uri` and open (creating where absent) this gallery's collections.

        uri: a milvus-lite file path ending in ``.db`` (its directory must exist) or a Milvus server URI.
        gallery_id: int >= 0. model_key: the embedding model's checksum (hex), non-empty; a different key never
        shares collections. dim: vector dimensionality >= 1. token: Milvus credentials ("user:password" or an API
        key). timeout: seconds for each Milvus call (None: no limit). mean_parts: as `GalleryIndex`'s (a fusion's
        means are normalised part by part).

        Raises ValueError on bad arguments; IndexCorruptError when Milvus is unreachable, or the existing collections
        have another schema, dimensionality, metric or model key.
        """
        if isinstance(gallery_id, bool) or not isinstance(gallery_id, int | np.integer) or gallery_id < 0:
            raise ValueError(f"gallery_id must be an integer >= 0, got {gallery_id!r}")
        if not isinstance(model_key, str) or not model_key or len(model_key) > _MODEL_KEY_MAX:
            raise ValueError(f"model_key must be a non-empty string of at most {_MODEL_KEY_MAX} characters")
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if identity_score not in ("best", "mean"):
            raise ValueError(f"identity_score must be 'best' or 'mean', got {identity_score!r}")
        self._gallery_id = int(gallery_id)
        self._model_key = model_key
        self._dim = int(dim)
        self._identity_score: IdentityScore = identity_score
        self._mean_parts = check_parts(mean_parts, dim)
        self._timeout = timeout
        self._faces_name, self._means_name = collection_names(self._gallery_id, model_key)
        self._lock = threading.RLock()
        pymilvus = _import_pymilvus()
        self._datatype: Any = pymilvus.DataType
        self._client_cls: Any = pymilvus.MilvusClient
        self._closed = False
        # The URI is left out of messages: it may carry credentials.
        with _rpc("connect"):
            self._client_obj: Any = pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout)
        try:
            with _rpc("open"):
                self._open()
        except BaseException:
            with suppress(IndexCorruptError):  # keep the original error
                self.close()
            raise

    # -- properties ------------------------------------------------------------------------------------------------

    @property
    def identity_score(self) -> IdentityScore:
        """How identities with several faces are scored."""
        return self._identity_score

    @property
    def dim(self) -> int:
        """Vector dimensionality."""
        return self._dim

    @property
    def backend(self) -> Literal["milvus"]:
        """Where the faces are stored: always "milvus"."""
        return "milvus"

    @property
    def gallery_id(self) -> int:
        """The gallery this object serves."""
        return self._gallery_id

    @property
    def model_key(self) -> str:
        """The embedding model's key (the full string, not the truncated one in the collection names)."""
        return self._model_key

    @property
    def collection_name(self) -> str:
        """Name of the faces collection (the means collection is this plus ``_means``)."""
        return self._faces_name

    @property
    def ntotal(self) -> int:
        """Number of faces."""
        with _rpc("count faces"):
            return self._count(self._faces_name)

    @property
    def n_identities(self) -> int:
        """Number of distinct identities with at least one face.

        ``identity_score="mean"``: the number of stored means (one count query). "best": a scan of every face's
        identity id (O(ntotal)).
        """
        with _rpc("count identities"):
            if self._identity_score == "mean":
                return self._count(self._means_name)
            seen: set[int] = set()
            for page in self._scan(self._faces_name, ["identity_id"]):
                seen.update(_int(row["identity_id"], "identity_id") for row in page)
            return len(seen)

    @property
    def n_compared(self) -> int:
        """How many vectors a query is compared with: identities ("mean") or faces ("best")."""
        return self.n_identities if self._identity_score == "mean" else self.ntotal

    @property
    def last_seq(self) -> int:
        """The catch-up watermark last stored with `set_last_seq` (by any process); 0 if never set."""
        with _rpc("read the watermark"):
            row = self._state_row()
            return 0 if row is None else _int(row["seq"], "seq")

    # -- reads -----------------------------------------------------------------------------------------------------

    def face_ids(self) -> I64:
        """All face ids, int64 (ntotal,), ascending (a full scan of the faces collection)."""
        with _rpc("list faces"):
            parts = [
                np.fromiter((_int(row["face_id"], "face_id") for row in page), dtype=np.int64, count=len(page))
                for page in self._scan(self._faces_name, ["face_id"])
            ]
        out = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        if out.size > 1 and bool((out[1:] == out[:-1]).any()):
            raise IndexCorruptError("Milvus returned a face id twice while listing faces")
        return out

    def contains(self, face_ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """bool (N,): which of face_ids int64 (N,) are stored."""
        fids = as_ids(face_ids, name="face_ids", allow_negative=True)
        with _rpc("look up faces"):
            found, _ = self._lookup(fids)
        return np.isin(fids, found)

    def identities_of(self, face_ids: npt.ArrayLike) -> I64:
        """Identity ids int64 (N,) for face ids int64 (N,); -1 where a face is unknown."""
        fids = as_ids(face_ids, name="face_ids", allow_negative=True)
        with _rpc("look up faces"):
            found, idents = self._lookup(fids)
        if found.size == 0:
            return np.full(fids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(found, fids), found.size - 1)
        return np.where(found[pos] == fids, idents[pos], -1).astype(np.int64)

    def search(self, xq: npt.ArrayLike, k: int, *, by: IdentityScore | None = None) -> list[list[Hit]]:
        """Up to k distinct identities per query xq float32 (M, dim), best first; M lists of `Hit`.

        An identity's score is the best score among its faces (or, with ``identity_score="mean"`` unless ``by`` is
        "best", the score of the normalised mean of its faces), and `Hit.face_id` is its best face for the query.
        Order among exactly tied identities is unspecified. At most `MAX_TOPK` faces are fetched per query for "best"
        (see the class docstring). k < 1, a bad xq or a bad ``by`` raise ValueError.
        """
        k = check_k(k)
        q = as_vectors(xq, self._dim, name="xq")
        if by not in (None, "best", "mean"):
            raise ValueError(f"by must be None, 'best' or 'mean', got {by!r}")
        if q.shape[0] == 0:
            return []
        with _rpc("search"):
            if self._identity_score == "mean" and by != "best":
                return self._search_means(q, k)
            return self._search_best(q, k)

    # -- writes ----------------------------------------------------------------------------------------------------

    def add(self, face_ids: npt.ArrayLike, identity_ids: npt.ArrayLike, x: npt.ArrayLike) -> None:
        """Upsert faces: face_ids int64 (N,) >= 0, identity_ids int64 (N,) >= 0, x float32 (N, dim).

        A face id already stored is overwritten (vector and identity), so applying the same add twice leaves the
        same state. Raises ValueError, writing nothing, on bad shapes/dtypes, non-finite values, negative ids, or a
        face id repeated within the call.
        """
        fids = as_ids(face_ids, name="face_ids")
        iids = as_ids(identity_ids, name="identity_ids")
        if fids.shape != iids.shape:
            raise ValueError(f"face_ids {fids.shape} and identity_ids {iids.shape} differ in shape")
        xs = as_vectors(x, self._dim)
        if xs.shape[0] != fids.size:
            raise ValueError(f"x has {xs.shape[0]} rows for {fids.size} face ids")
        if np.unique(fids).size != fids.size:
            raise ValueError("face_ids repeats an id within the call")
        if fids.size == 0:
            return
        with self._lock, _rpc("add faces"):
            if self._maintains_means():
                _, old_idents = self._lookup(fids)
                self._write_means(np.union1d(iids, old_idents), gone=fids, new=(fids, iids, xs))
            for start in range(0, fids.size, _WRITE_CHUNK):
                stop = start + _WRITE_CHUNK
                rows = [
                    {"face_id": f, "identity_id": i, _VECTOR: v}
                    for f, i, v in zip(
                        fids[start:stop].tolist(), iids[start:stop].tolist(), xs[start:stop], strict=True
                    )
                ]
                self._c.upsert(self._faces_name, rows, timeout=self._timeout)

    def remove_faces(self, face_ids: npt.ArrayLike) -> int:
        """Remove faces by id int64 (N,); returns how many were present (unknown ids ignored)."""
        fids = as_ids(face_ids, name="face_ids", allow_negative=True)
        with self._lock, _rpc("remove faces"):
            found, idents = self._lookup(fids)
            if found.size == 0:
                return 0
            if self._maintains_means():
                self._write_means(np.unique(idents), gone=found)
            self._delete(self._faces_name, found)
            return int(found.size)

    def remove_identity(self, identity_id: int) -> int:
        """Remove all faces of one identity; returns how many faces were removed."""
        if isinstance(identity_id, bool) or not isinstance(identity_id, int | np.integer):
            raise ValueError(f"identity_id must be an integer, got {identity_id!r}")  # noqa: TRY004 (as as_ids does)
        if identity_id < 0:
            return 0
        with self._lock, _rpc("remove an identity"):
            rows = self._query(self._faces_name, f"identity_id == {int(identity_id)}", ["face_id"])
            fids = np.unique(np.asarray([_int(r["face_id"], "face_id") for r in rows], dtype=np.int64))
            if self._maintains_means():
                self._delete(self._means_name, np.asarray([identity_id], dtype=np.int64))
            if fids.size:
                self._delete(self._faces_name, fids)
            return int(fids.size)

    def set_last_seq(self, seq: int) -> None:
        """Store the catch-up watermark (int >= 0) beside this gallery's collections; any process reads it back."""
        if isinstance(seq, bool) or not isinstance(seq, int | np.integer) or seq < 0:
            raise ValueError(f"seq must be an integer >= 0, got {seq!r}")
        with _rpc("store the watermark"):
            self._write_state(int(seq))

    def rebuild_means(self) -> int:
        """Recompute every identity mean from the stored faces (creating the means collection if absent).

        Repairs means left stale by concurrent writers to one identity. Returns the number of identities.
        O(ntotal) reads. Raises IndexCorruptError on a Milvus failure.
        """
        with self._lock, _rpc("rebuild the identity means"):
            self._ensure_collection(self._means_name, "identity_id", with_identity=False)
            return self._rebuild_means()

    def drop(self) -> None:
        """Delete this gallery's collections (faces and means) and its watermark row, then `close` this object.

        Other processes' objects for the same gallery fail with IndexCorruptError afterwards (their collections are
        gone); opening a new MilvusGallery makes an empty gallery.
        """
        with self._lock:
            with _rpc("drop the gallery"):
                for name in (self._means_name, self._faces_name):
                    if self._c.has_collection(name, timeout=self._timeout):
                        self._c.drop_collection(name, timeout=self._timeout)
                self._c.delete(STATE_COLLECTION, ids=[self._faces_name], timeout=self._timeout)
            self.close()

    def close(self) -> None:
        """Release the connection (idempotent). The data stays in Milvus."""
        if self._closed:
            return
        self._closed = True
        client = getattr(self, "_client_obj", None)
        if client is not None:
            with _rpc("close"):
                client.close()

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MilvusGallery(collection={self._faces_name!r}, dim={self._dim}, "
            f"identity_score={self._identity_score!r}{', closed' if self._closed else ''})"
        )

    # -- internals: setup ------------------------------------------------------------------------------------------

    @property
    def _c(self) -> Any:
        if self._closed:
            raise _ClosedError("this MilvusGallery is closed")
        return self._client_obj

    def _open(self) -> None:
        self._ensure_state_collection()
        row = self._state_row()  # also refuses another model whose key shares the truncated name
        if row is None:
            self._write_state(0)
        self._ensure_collection(self._faces_name, "face_id", with_identity=True)
        if self._identity_score == "mean":
            created = self._ensure_collection(self._means_name, "identity_id", with_identity=False)
            if created and self._count(self._faces_name) > 0:
                self._rebuild_means()

    def _ensure_collection(self, name: str, pk: str, *, with_identity: bool) -> bool:
        """Create `name` (FLAT/IP index, strong consistency) unless it exists; check its schema; load it.

        Returns whether this call created it.
        """
        dt = self._datatype
        created = False
        if not self._c.has_collection(name, timeout=self._timeout):
            schema = self._client_cls.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(pk, dt.INT64, is_primary=True)
            if with_identity:
                schema.add_field("identity_id", dt.INT64)
            schema.add_field(_VECTOR, dt.FLOAT_VECTOR, dim=self._dim)
            created = self._create(name, schema)
        fields = {pk: (dt.INT64, True), _VECTOR: (dt.FLOAT_VECTOR, False)}
        if with_identity:
            fields["identity_id"] = (dt.INT64, False)
        self._check_schema(name, fields, self._dim)
        self._c.load_collection(name, timeout=self._timeout)
        return created

    def _ensure_state_collection(self) -> None:
        dt = self._datatype
        if not self._c.has_collection(STATE_COLLECTION, timeout=self._timeout):
            schema = self._client_cls.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", dt.VARCHAR, is_primary=True, max_length=_NAME_MAX)
            schema.add_field("model_key", dt.VARCHAR, max_length=_MODEL_KEY_MAX)
            schema.add_field("dim", dt.INT64)
            schema.add_field("seq", dt.INT64)
            schema.add_field(_VECTOR, dt.FLOAT_VECTOR, dim=_STATE_DIM)
            self._create(STATE_COLLECTION, schema)
        fields = {
            "key": (dt.VARCHAR, True),
            "model_key": (dt.VARCHAR, False),
            "dim": (dt.INT64, False),
            "seq": (dt.INT64, False),
            _VECTOR: (dt.FLOAT_VECTOR, False),
        }
        self._check_schema(STATE_COLLECTION, fields, _STATE_DIM)
        self._c.load_collection(STATE_COLLECTION, timeout=self._timeout)

    def _create(self, name: str, schema: Any) -> bool:
        index_params = self._client_cls.prepare_index_params()
        index_params.add_index(field_name=_VECTOR, index_type=INDEX_TYPE, index_name=_VECTOR, metric_type=_METRIC)
        try:
            self._c.create_collection(
                name, schema=schema, index_params=index_params, consistency_level=_CONSISTENCY, timeout=self._timeout
            )
        except Exception:
            if self._c.has_collection(name, timeout=self._timeout):
                return False  # another process created it first
            raise
        return True

    def _check_schema(self, name: str, expected: dict[str, tuple[Any, bool]], dim: int) -> None:
        """IndexCorruptError unless `name` has exactly the expected fields (type, is-primary), vector dim and IP."""
        desc = self._c.describe_collection(name, timeout=self._timeout)
        got = {f["name"]: f for f in desc["fields"]}
        if set(got) != set(expected):
            raise IndexCorruptError(f"collection {name!r} has fields {sorted(got)}, expected {sorted(expected)}")
        for field, (dtype, primary) in expected.items():
            f = got[field]
            if f["type"] != dtype or bool(f.get("is_primary", False)) != primary:
                raise IndexCorruptError(f"collection {name!r}: field {field!r} is {f['type']!r}, expected {dtype!r}")
        vdim = int(got[_VECTOR].get("params", {}).get("dim", -1))
        if vdim != dim:
            raise IndexCorruptError(f"collection {name!r} holds {vdim}-d vectors, expected {dim}")
        index_names = self._c.list_indexes(name, field_name=_VECTOR, timeout=self._timeout)
        if not index_names:
            raise IndexCorruptError(f"collection {name!r} has no vector index")
        metric = str(self._c.describe_index(name, index_names[0], timeout=self._timeout).get("metric_type", ""))
        if metric.upper() != _METRIC:
            raise IndexCorruptError(f"collection {name!r} uses metric {metric!r}, expected {_METRIC}")

    def _state_row(self) -> dict[str, Any] | None:
        """This gallery's state row, checked against our model key and dim; None if absent."""
        rows = self._query(STATE_COLLECTION, f'key == "{self._faces_name}"', ["model_key", "dim", "seq"])
        if not rows:
            return None
        if len(rows) > 1:
            raise IndexCorruptError(f"{len(rows)} state rows for {self._faces_name!r}")
        row: dict[str, Any] = dict(rows[0])
        stored_key = row.get("model_key")
        if stored_key != self._model_key:
            raise IndexCorruptError(
                f"collection {self._faces_name!r} belongs to model key {stored_key!r}, not {self._model_key!r}"
            )
        if _int(row.get("dim"), "dim") != self._dim:
            raise IndexCorruptError(
                f"collection {self._faces_name!r} was made for dim {row.get('dim')}, not {self._dim}"
            )
        return row

    def _write_state(self, seq: int) -> None:
        row = {
            "key": self._faces_name,
            "model_key": self._model_key,
            "dim": self._dim,
            "seq": seq,
            _VECTOR: [0.0] * _STATE_DIM,
        }
        self._c.upsert(STATE_COLLECTION, [row], timeout=self._timeout)

    # -- internals: reads ------------------------------------------------------------------------------------------

    def _query(self, name: str, filter_: str, fields: list[str]) -> list[dict[str, Any]]:
        rows = self._c.query(
            name, filter=filter_, output_fields=fields, consistency_level=_CONSISTENCY, timeout=self._timeout
        )
        return list(rows)

    def _count(self, name: str) -> int:
        rows = self._query(name, "", ["count(*)"])
        if len(rows) != 1:
            raise IndexCorruptError(f"count(*) of {name!r} returned {len(rows)} rows")
        return _int(rows[0]["count(*)"], "count")

    def _scan(self, name: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every row of `name`, in pages, by primary key (pymilvus's query iterator)."""
        it = self._c.query_iterator(
            name, batch_size=_ITER_BATCH, output_fields=fields, consistency_level=_CONSISTENCY, timeout=self._timeout
        )
        try:
            while True:
                page = it.next()
                if not page:
                    return
                yield list(page)
        finally:
            it.close()

    def _lookup(self, fids: I64) -> tuple[I64, I64]:
        """(stored face ids ascending, their identities) among fids (N,)."""
        want = np.unique(fids[fids >= 0])
        found: list[int] = []
        idents: list[int] = []
        for chunk in _chunks(want, _FILTER_CHUNK):
            for row in self._query(self._faces_name, _in_filter("face_id", chunk), ["face_id", "identity_id"]):
                found.append(_int(row["face_id"], "face_id"))
                idents.append(_int(row["identity_id"], "identity_id"))
        f = np.asarray(found, dtype=np.int64)
        i = np.asarray(idents, dtype=np.int64)
        order = np.argsort(f, kind="stable")
        f, i = f[order], i[order]
        if f.size and (bool((f[1:] == f[:-1]).any()) or not bool(np.isin(f, want).all())):
            raise IndexCorruptError("Milvus returned duplicate or unrequested face ids")
        return f, i

    def _faces_of(self, idents: I64) -> tuple[I64, I64, F32]:
        """All stored faces of the given identities: face ids (F,), identity ids (F,), vectors float32 (F, dim)."""
        f: list[int] = []
        i: list[int] = []
        x: list[Any] = []
        for chunk in _chunks(np.unique(idents), _IDENTITY_CHUNK):
            for row in self._query(
                self._faces_name, _in_filter("identity_id", chunk), ["face_id", "identity_id", _VECTOR]
            ):
                f.append(_int(row["face_id"], "face_id"))
                i.append(_int(row["identity_id"], "identity_id"))
                x.append(row[_VECTOR])
        vectors = (
            np.asarray(x, dtype=np.float32).reshape(len(x), self._dim) if x else np.empty((0, self._dim), np.float32)
        )
        return np.asarray(f, dtype=np.int64), np.asarray(i, dtype=np.int64), vectors

    def _search_rows(
        self, name: str, pk: str, q: F32, limit: int, fields: list[str]
    ) -> list[tuple[F32, I64, list[dict[str, Any]]]]:
        """One Milvus search per chunk of queries: per query (scores desc (L,), primary keys (L,), entities)."""
        out: list[tuple[F32, I64, list[dict[str, Any]]]] = []
        per = max(1, min(MAX_TOPK, _RESULT_BUDGET // limit))
        for start in range(0, q.shape[0], per):
            batch = q[start : start + per]
            res = self._c.search(
                name,
                data=list(batch),
                limit=limit,
                output_fields=fields,
                anns_field=_VECTOR,
                search_params={"metric_type": _METRIC},
                consistency_level=_CONSISTENCY,
                timeout=self._timeout,
            )
            if len(res) != batch.shape[0]:
                raise IndexCorruptError(f"Milvus answered {len(res)} result rows for {batch.shape[0]} queries")
            for hits in res:
                if len(hits) > limit:
                    raise IndexCorruptError(f"Milvus returned {len(hits)} hits for limit {limit}")
                scores = np.asarray([float(h["distance"]) for h in hits], dtype=np.float32)
                keys = np.asarray([_int(h[pk], pk) for h in hits], dtype=np.int64)
                entities = [dict(h.get("entity") or {}) for h in hits]
                order = np.argsort(-scores, kind="stable")  # Milvus sorts already; the crowding logic relies on it
                out.append((scores[order], keys[order], [entities[j] for j in order.tolist()]))
        return out

    def _search_best(self, q: F32, k: int) -> list[list[Hit]]:
        """Top-k identities by their best face, fetching 4k faces per query and doubling until k distinct appear.

        The faces fetched are a prefix of the global face ranking, so the first occurrence of an identity in it is
        that identity's best face, and any identity not seen yet scores no higher than the last face fetched. Once
        k distinct identities appear (or every face was fetched, or `MAX_TOPK` faces were), those are the answer.
        """
        m = q.shape[0]
        results: list[list[Hit]] = [[] for _ in range(m)]
        pending = list(range(m))
        fetch = min(MAX_TOPK, 4 * k)
        while pending:
            rows = self._search_rows(self._faces_name, "face_id", q[pending], fetch, ["identity_id"])
            still: list[int] = []
            for (scores, faces, entities), qi in zip(rows, pending, strict=True):
                idents = np.asarray([_int(e.get("identity_id"), "identity_id") for e in entities], dtype=np.int64)
                hits = _distinct_identities(scores, faces, idents, k)
                if len(hits) == k or faces.size < fetch or fetch >= MAX_TOPK:
                    results[qi] = hits
                else:
                    still.append(qi)
            pending = still
            fetch = min(MAX_TOPK, fetch * 2)
        return results

    def _search_means(self, q: F32, k: int) -> list[list[Hit]]:
        """Top-k identities by their mean face; each hit names the identity's best face for that query."""
        rows = self._search_rows(self._means_name, "identity_id", q, min(k, MAX_TOPK), [])
        hit_idents = np.unique(np.concatenate([ids for _, ids, _ in rows])) if rows else np.empty(0, np.int64)
        faces, owners, vectors = self._faces_of(hit_idents)
        order = np.lexsort((faces, owners))  # by identity, then face id: ties go to the lowest face id
        faces, owners, vectors = faces[order], owners[order], vectors[order]
        face_scores = vectors @ q.T  # (F, M)
        results: list[list[Hit]] = []
        for row, (scores, idents, _) in enumerate(rows):
            lo = np.searchsorted(owners, idents, side="left")
            hi = np.searchsorted(owners, idents, side="right")
            hits: list[Hit] = []
            for ident, score, a, b in zip(idents.tolist(), scores.tolist(), lo.tolist(), hi.tolist(), strict=True):
                if a == b:
                    continue  # its last face was removed by another process between the two reads
                best = int(faces[a + int(np.argmax(face_scores[a:b, row]))])
                hits.append(Hit(int(ident), best, float(score)))
            results.append(hits)
        return results

    # -- internals: writes -----------------------------------------------------------------------------------------

    def _maintains_means(self) -> bool:
        if self._identity_score == "mean":
            return True
        return bool(self._c.has_collection(self._means_name, timeout=self._timeout))

    def _delete(self, name: str, ids: I64) -> None:
        for chunk in _chunks(ids, _FILTER_CHUNK):
            self._c.delete(name, ids=chunk.tolist(), timeout=self._timeout)

    def _write_means(self, touched: I64, *, gone: I64, new: tuple[I64, I64, F32] | None = None) -> None:
        """Recompute the means of `touched` identities from their stored faces, less face ids `gone`, plus `new`.

        Called before the faces change, so the means written are those of the state after it; a replay of the same
        change after a crash recomputes the same values. Identities left without faces lose their mean row.
        """
        touched = np.unique(touched)
        f, i, x = self._faces_of(touched)
        keep = ~np.isin(f, gone)
        i, x = i[keep], x[keep]
        if new is not None:
            i = np.concatenate([i, new[1]])
            x = np.concatenate([x, new[2]])
        self._upsert_means(touched, i, x)

    def _upsert_means(self, touched: I64, idents: I64, x: F32) -> None:
        """Write normalised means for the `touched` identities (ascending) from faces (idents (F,), x (F, dim))."""
        sums = np.zeros((touched.size, self._dim), dtype=np.float64)
        pos = np.searchsorted(touched, idents)
        np.add.at(sums, pos, x.astype(np.float64))
        alive = np.isin(touched, idents)
        means = unit_means(sums, self._mean_parts)
        live = np.flatnonzero(alive)
        for start in range(0, live.size, _WRITE_CHUNK):
            sel = live[start : start + _WRITE_CHUNK]
            rows = [{"identity_id": int(touched[j]), _VECTOR: means[j]} for j in sel.tolist()]
            self._c.upsert(self._means_name, rows, timeout=self._timeout)
        dead = touched[~alive]
        if dead.size:
            self._delete(self._means_name, dead)

    def _rebuild_means(self) -> int:
        idents: list[I64] = []
        vectors: list[F32] = []
        for page in self._scan(self._faces_name, ["identity_id", _VECTOR]):
            idents.append(np.asarray([_int(r["identity_id"], "identity_id") for r in page], dtype=np.int64))
            vectors.append(np.asarray([r[_VECTOR] for r in page], dtype=np.float32).reshape(len(page), self._dim))
        i = np.concatenate(idents) if idents else np.empty(0, np.int64)
        x = np.concatenate(vectors) if vectors else np.empty((0, self._dim), np.float32)
        stale: list[int] = []
        for page in self._scan(self._means_name, ["identity_id"]):
            stale.extend(_int(r["identity_id"], "identity_id") for r in page)
        touched = np.union1d(np.unique(i), np.asarray(stale, dtype=np.int64))
        self._upsert_means(touched, i, x)
        return int(np.unique(i).size)


def _distinct_identities(scores: F32, faces: I64, idents: I64, k: int) -> list[Hit]:
    """First k distinct identities of one result row (scores descending)."""
    _, first = np.unique(idents, return_index=True)
    first = np.sort(first)[:k]
    return [Hit(int(idents[j]), int(faces[j]), float(scores[j])) for j in first.tolist()]
