"""The ``facedb`` command line: serve, migrate, enrol folders, identify and verify photos."""

from __future__ import annotations

import getpass
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from tqdm import tqdm

from embedding.errors import ImageError, ModelLoadError
from service import auth, logs, schemas
from service.admin import AdminService
from service.audit import AuditLog
from service.core import DEFAULT_GALLERY, Upload
from service.db import crud, migrate
from service.db.engine import Database
from service.db.models import ModelStatus, ModelVersion, as_utc, utcnow
from service.errors import FacedbError
from service.reindex import JobProgress
from service.runtime import Runtime, build_runtime
from service.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pnm", ".gif", ".bmp", ".webp"}

app = typer.Typer(help="facedb: face enrollment, identification and verification.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
models_app = typer.Typer(help="Model versions: list, activate (roll back), retire.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

GalleryOpt = Annotated[str, typer.Option("--gallery", "-g", help="Gallery name.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _problems(exc: ValidationError) -> str:
    """A validation error in one line: ``field: message; ...`` (settings name themselves in their messages)."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(map(str, e["loc"]))
        message = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr instead of a traceback."""
    try:
        yield
    except FacedbError as exc:
        raise _fail(f"{exc.message} [{exc.code}]") from None
    except ValidationError as exc:
        raise _fail(_problems(exc), 2) from None
    except (migrate.SchemaError, ModelLoadError) as exc:
        raise _fail(str(exc)) from None
    except DBAPIError as exc:
        url = make_url(Settings().resolved_database_url).render_as_string(hide_password=True)
        first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
        raise _fail(f"the database at {url} cannot be used: {first}") from None
    except OSError as exc:
        raise _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


def _require_database(settings: Settings) -> None:
    """Refuse to work on a SQLite file that does not exist: opening it would silently create an empty database
    (e.g. when run from another directory than the service, FACEDB_DATA_DIR being relative)."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database).resolve()
    if not path.exists():
        raise FacedbError(
            404,
            "database_not_found",
            f"no database at {path} (FACEDB_DATA_DIR={settings.data_dir}, relative to {Path.cwd()}): run this "
            "where the service runs, set FACEDB_DATA_DIR or FACEDB_DATABASE_URL, or create it with `facedb db upgrade`",
        )


@contextmanager
def _runtime() -> Iterator[Runtime]:
    with _clean_errors():
        _require_database(Settings())
        runtime = build_runtime(Settings(), batching=False)
    try:
        with _clean_errors():
            yield runtime
    finally:
        runtime.close()


@contextmanager
def _database(*, check: bool = False, create: bool = False) -> Iterator[Database]:
    """The configured database (schema checked if ``check``; a new SQLite file only if ``create``), errors as one
    line, the pool closed after."""
    with _clean_errors():
        if not create:
            _require_database(Settings())
        db = Database(Settings().resolved_database_url)
        try:
            if check:
                migrate.check_schema(db.engine)
            yield db
        finally:
            db.dispose()


def _read(path: Path) -> Upload:
    return Upload(filename=path.name, data=path.read_bytes())


# --- server and schema -------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (FACEDB_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (FACEDB_PORT).")] = None,
) -> None:
    """Start the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    from service.api import create_app  # noqa: PLC0415

    settings = Settings()
    with _database(check=True):
        pass
    logs.configure(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,  # logs.configure's handler: text or JSON, request ids on every line
        access_log=False,  # RequestIdMiddleware writes one access line per request, with its id and key
        # uvicorn would trust X-Forwarded-For from 127.0.0.1 by default: only a configured proxy is believed.
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or migrate the database schema (the URL comes from FACEDB_DATABASE_URL)."""
    with _database(create=True) as db:
        migrate.upgrade(db.engine, revision)
        typer.echo(f"database at revision {migrate.current_revision(db.engine)} ({db.engine.url!r})")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, or 'base'.")]) -> None:
    """Migrate the schema down (``base`` removes every table and all data)."""
    with _database() as db:
        migrate.downgrade(db.engine, revision)
        typer.echo(f"database at revision {migrate.current_revision(db.engine)}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the one this code needs."""
    with _database() as db:
        typer.echo(f"database: {migrate.current_revision(db.engine)}  code: {migrate.head_revision(db.engine)}")


# --- enrolment and search ----------------------------------------------------------------------------


def enrol_summary(identities: int, accepted: int, reasons: Counter[str], warned: int) -> str:
    """The last line of `facedb enroll`, local or over HTTP."""
    summary = ", ".join(f"{code}: {n}" for code, n in reasons.most_common()) or "none"
    line = f"{identities} identities, {accepted} faces accepted, {sum(reasons.values())} rejected ({summary})"
    return line + (f"; {warned} accepted with a possible_duplicate warning" if warned else "")


@app.command()
def enroll(
    directory: Annotated[Path, typer.Argument(help="One sub-folder of images per identity.", file_okay=False)],
    gallery: GalleryOpt = DEFAULT_GALLERY,
    create_gallery: Annotated[bool, typer.Option(help="Create the gallery if it does not exist.")] = True,
    detect: Annotated[bool, typer.Option(help="Detect and align faces; --no-detect for pre-cropped faces.")] = True,
    allow_conflict: Annotated[bool, typer.Option(help="Enrol faces that are near-certainly another identity.")] = False,
    allow_mismatch: Annotated[
        bool, typer.Option(help="Add faces that do not look like the identity's other faces.")
    ] = False,
    url: Annotated[
        str | None, typer.Option(help="Enrol through a running server's API (e.g. http://127.0.0.1:8000).")
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="FACEDB_API_KEY", help="API key for --url (enroll scope; or FACEDB_API_KEY).")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="A file holding the API key, e.g. facedb_data/admin.key.")
    ] = None,
) -> None:
    """Enrol a folder: each sub-folder is one identity (its name is the external_id), each image one face.

    With --url it goes through a running server's API with an API key; without, straight into the configured
    database (offline bulk work). Photos that fail the quality gates are reported with their reason and skipped."""
    if not directory.is_dir():
        raise _fail(f"{directory} is not a directory", 2)
    people = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    jobs = [(person, sorted(f for f in person.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)) for person in people]
    total = sum(len(files) for _, files in jobs)
    if total == 0:
        raise _fail(f"no images found in sub-folders of {directory}", 2)
    if url is not None:
        if key is None and key_file is not None:
            with _clean_errors():
                key = key_file.read_text().strip()
        if not key:
            raise _fail("--url needs an API key: --key, --key-file or FACEDB_API_KEY", 2)
        from service.remote import enroll_over_http  # noqa: PLC0415 - only this mode needs the client

        with _clean_errors():
            summary = enroll_over_http(
                url,
                key,
                jobs,
                gallery=gallery,
                create_gallery=create_gallery,
                detect=detect,
                allow_conflict=allow_conflict,
                allow_mismatch=allow_mismatch,
            )
        typer.echo(summary)
        return
    accepted, reasons, warned = 0, Counter[str](), 0
    with _runtime() as rt:
        service = rt.service
        if create_gallery and gallery not in {g.name for g in service.list_galleries().items}:
            service.create_gallery(schemas.GalleryCreate(name=gallery))
        chunk = rt.settings.max_images_per_request
        with tqdm(total=total, unit="img", desc=f"enrolling into {gallery}", file=sys.stderr) as bar:
            for person, files in jobs:
                identity = service.find_identity(gallery, person.name) or service.create_identity(
                    gallery, schemas.IdentityCreate(external_id=person.name, display_name=person.name)
                )
                for i in range(0, len(files), chunk):
                    batch = files[i : i + chunk]
                    try:
                        result = service.enroll(
                            gallery,
                            identity.id,
                            [_read(f) for f in batch],
                            detect=detect,
                            allow_conflict=allow_conflict,
                            allow_mismatch=allow_mismatch,
                        )
                        rejected = result.rejected
                        accepted += len(result.accepted)
                        for w in result.warnings:
                            tqdm.write(f"warning {person.name}/{w.filename}: {w.code}: {w.message}", file=sys.stderr)
                        warned += len(result.warnings)
                        _audit(
                            rt.db,
                            "enroll_faces",
                            gallery=gallery,
                            identity_id=identity.id,
                            face_ids=[a.face_id for a in result.accepted],
                            possible_duplicates={str(w.face_id): w.other_identity for w in result.warnings},
                        )
                    except FacedbError as exc:
                        if exc.code != "no_face_enrolled":
                            raise
                        rejected = [schemas.RejectedFile(**r) for r in (exc.details or {}).get("rejected", [])]
                    for r in rejected:
                        reasons[r.code] += 1
                        tqdm.write(f"rejected {person.name}/{r.filename}: {r.code}: {r.message}", file=sys.stderr)
                    bar.update(len(batch))
    typer.echo(enrol_summary(len(jobs), accepted, reasons, warned))


@app.command()
def identify(
    image: Annotated[Path, typer.Argument(help="The probe photo.", dir_okay=False)],
    gallery: GalleryOpt = DEFAULT_GALLERY,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Candidates to show.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold; default from the model.")] = None,
    detect: Annotated[bool, typer.Option(help="Detect faces; --no-detect for a pre-cropped face.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Who is this? For each face (largest first): the candidates, best first, and the decision."""
    with _runtime() as rt:
        result = rt.service.identify(gallery, _read(image), top_k=top_k, threshold=threshold, detect=detect)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    if not result.faces:
        typer.echo(f"no face found (model {result.model_version})")
        return
    for n, face in enumerate(result.faces, 1):
        if face.face is not None:
            x0, y0, x1, y1 = face.face.box
            typer.echo(f"face {n}: box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f})")
        for rank, c in enumerate(face.candidates, 1):
            typer.echo(
                f"{rank:>3}  {c.score:+.4f}  {c.identity.external_id}  (identity {c.identity.id}, face {c.face_id})"
            )
        decision = f"match: {face.match.identity.external_id}" if face.match else "no match"
        typer.echo(f"{decision} (threshold {result.threshold:.4f}, {result.model_version})")


@app.command()
def verify(
    image_a: Annotated[Path, typer.Argument(dir_okay=False)],
    image_b: Annotated[Path, typer.Argument(dir_okay=False)],
    threshold: Annotated[float | None, typer.Option(help="Decision threshold; default from the model.")] = None,
    detect: Annotated[bool, typer.Option(help="Detect faces; --no-detect for pre-cropped faces.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Are these two photos of the same person (their largest faces)? Exit status 0 = same, 3 = different."""
    with _runtime() as rt:
        result = rt.service.verify_pair(_read(image_a), _read(image_b), threshold=threshold, detect=detect)
    if as_json:
        typer.echo(json.dumps(result.model_dump()))
    else:
        verdict = "same person" if result.match else "different people"
        typer.echo(f"{verdict}: score {result.score:+.4f}, threshold {result.threshold:.4f}")
    if not result.match:
        raise typer.Exit(3)


@app.command()
def inspect(
    image: Annotated[Path, typer.Argument(help="A photo.", dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the drawing (PNG).")] = Path("inspect.png"),
) -> None:
    """Draw the detected faces, their landmarks, quality verdicts and aligned crops into a PNG."""
    from embedding.embedder import read_card  # noqa: PLC0415
    from embedding.facepath import build_detector  # noqa: PLC0415 - only this command needs them here
    from embedding.inspect import inspect_image  # noqa: PLC0415

    settings = Settings()
    with _clean_errors():
        card = read_card(settings.resolved_model_path)
    detector = build_detector(settings.detector, landmarks=settings.landmarks_for(card.input))
    with _clean_errors():
        try:
            result = inspect_image(
                _read(image).data,
                detector=detector,
                out_path=out,
                settings=settings.quality,
                max_pixels=settings.max_pixels,
            )
        except ImageError as exc:
            raise FacedbError(422, exc.code, exc.message) from exc
    for n, (face, report) in enumerate(zip(result.faces, result.reports, strict=True), 1):
        x0, y0, x1, y1 = face.box
        verdict = "passes the enrolment gates" if report.passed else "fails: " + ", ".join(report.codes)
        typer.echo(f"face {n}: box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}), score {face.score:.2f}; {verdict}")
    typer.echo(f"{len(result.faces)} face(s); drawing written to {out}")


# --- model versions and re-indexing ------------------------------------------------------------------


@contextmanager
def _admin() -> Iterator[AdminService]:
    with _database(check=True) as db:
        yield AdminService(db=db, settings=Settings())


def _run_job(admin: AdminService, mv: ModelVersion, *, allow_missing: bool) -> None:
    if mv.status == ModelStatus.ACTIVE:
        typer.echo(f"{mv.name}@{mv.version} is already the active model; nothing to do")
        return
    reindexer = admin.reindexer
    job_id = reindexer.start_job(mv.id)
    typer.echo(f"re-index job {job_id}: re-embedding stored faces with {mv.name}@{mv.version}", err=True)
    with tqdm(total=None, unit="face", desc="re-embedding", file=sys.stderr) as bar:

        def show(p: JobProgress) -> None:
            bar.total = p.total
            bar.n = p.done + p.failed
            bar.refresh()

        started = time.monotonic()
        result = reindexer.run(job_id, allow_missing=allow_missing, on_progress=show)
    job = admin.get_job(job_id)
    rate = f"{result.rate_per_s:.1f} faces/s" if result.rate_per_s else "nothing to re-embed"
    switch = f"{job.switch_seconds * 1000:.0f} ms" if job.switch_seconds is not None else "-"
    typer.echo(
        f"{job.message}: {job.done}/{job.total} faces have templates, {job.failed} could not be re-embedded; "
        f"{rate}; {time.monotonic() - started:.1f} s in all; switch transaction {switch}"
    )


@app.command()
def reindex(
    model: Annotated[Path, typer.Option("--model", help="The new model file.", exists=True, dir_okay=False)],
    allow_missing: Annotated[
        bool, typer.Option(help="Switch even if some faces have no stored crop (they leave search).")
    ] = False,
) -> None:
    """Register a model, re-embed every stored face with it, then switch to it atomically.

    Running servers keep answering with the current model until the switch. Safe to kill and run again:
    it continues where it stopped.
    """
    with _admin() as admin:
        mv = admin.reindexer.register(model)
        _run_job(admin, mv, allow_missing=allow_missing)


@models_app.command("list")
def models_list() -> None:
    """Registered model versions, the active one first."""
    with _admin() as admin:
        items = admin.list_models().items
    order = {"active": 0, "building": 1, "retired": 2}
    for m in sorted(items, key=lambda m: (order.get(m.status, 3), -m.id)):
        typer.echo(
            f"{m.id:>3}  {m.status:<8}  {m.name}@{m.version}  dim {m.embedding_dim}  "
            f"threshold {m.default_threshold:.4f}  templates {m.templates}  sha256 {m.checksum[:12]}"
        )


@models_app.command("activate")
def models_activate(
    version: Annotated[str, typer.Argument(help="Id, version or checksum prefix of a registered model.")],
    allow_missing: Annotated[bool, typer.Option(help="Switch even if some faces cannot be re-embedded.")] = False,
) -> None:
    """Switch to a registered version (e.g. roll back), re-embedding only the faces it lacks."""
    with _admin() as admin:
        _run_job(admin, admin.reindexer.prepare(version), allow_missing=allow_missing)


@models_app.command("retire")
def models_retire(
    version: Annotated[str, typer.Argument(help="Id, version or checksum prefix of a registered model.")],
    purge: Annotated[bool, typer.Option(help="Also delete its templates (it can still be re-activated).")] = False,
) -> None:
    """Retire a version that is not active; its templates are kept for a quick rollback unless --purge."""
    with _admin() as admin, admin.db.write() as session:
        mv = crud.find_model_version(session, key=version)
        if mv is None:
            raise FacedbError(404, "model_version_not_found", f"no single model version matches {version!r}")
        if mv.status == ModelStatus.ACTIVE:
            raise FacedbError(409, "model_active", "the active model cannot be retired; activate another first")
        mv.status = ModelStatus.RETIRED
        removed = crud.delete_templates(session, model_version_id=mv.id) if purge else 0
    typer.echo(f"retired {mv.name}@{mv.version}" + (f"; deleted {removed} templates" if purge else ""))


# --- API keys ------------------------------------------------------------------------------------------

CLI_ACTOR = "cli"
"""The audit log's key name for what the command line does straight in the database."""


def _audit(db: Database, action: str, *, gallery: str | None = None, **target: object) -> None:
    AuditLog(db, Settings()).record(
        key_name=CLI_ACTOR,
        action=action,
        gallery=gallery,
        target=target,
        status=200,
        outcome="ok",
        client=f"local:{getpass.getuser()}",
    )


def _parse_expiry(text: str) -> datetime:
    """``30d``, ``12h``, ``90m`` from now, or an ISO 8601 time (UTC unless it says otherwise)."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1:] in units:
        return utcnow() + timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise FacedbError(
            422, "invalid_expiry", f"--expires {text!r}: give 30d, 12h, 90m or an ISO 8601 time"
        ) from None
    return as_utc(at)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A unique name; the audit log shows it.")],
    scope: Annotated[list[str], typer.Option("--scope", help="admin, enroll, identify or read; repeat for several.")],
    gallery: Annotated[
        list[str] | None, typer.Option("--gallery", help="Only this gallery; repeat for several (not for admin).")
    ] = None,
    expires: Annotated[str | None, typer.Option(help="30d, 12h, 90m or an ISO 8601 time; default never.")] = None,
    rate: Annotated[
        float | None, typer.Option(help="Requests per second; default FACEDB_RATE_LIMIT_PER_S.", min=0.001)
    ] = None,
) -> None:
    """Create an API key. Its secret is the last line printed, shown only this once."""
    with _clean_errors():
        body = schemas.ApiKeyCreate(
            name=name,
            scopes=scope,
            galleries=gallery or None,
            expires_at=_parse_expiry(expires) if expires else None,
            rate_limit=rate,
        )
    with _database(check=True) as db:
        key, secret = auth.create_key(
            db,
            name=body.name,
            scopes=[auth.Scope(s) for s in body.scopes],
            galleries=body.galleries,
            expires_at=body.expires_at,
            rate_limit=body.rate_limit,
            created_by=CLI_ACTOR,
        )
        _audit(db, "create_key", key_id=key.id, name=key.name, scopes=key.scopes, galleries=key.galleries)
    public = auth.key_public(key)
    typer.echo(f"created key {public.id} {public.name!r}: scopes {', '.join(public.scopes)}", err=True)
    typer.echo(f"galleries: {', '.join(public.galleries) if public.galleries else 'all'}", err=True)
    typer.echo(f"expires: {public.expires_at.isoformat() if public.expires_at else 'never'}", err=True)
    typer.echo("the secret follows; it is shown only now (send it as Authorization: Bearer <secret>):", err=True)
    typer.echo(secret)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every key, revoked ones included; secrets are never shown again."""
    with _database(check=True) as db:
        keys = auth.list_keys(db)
    if as_json:
        typer.echo(keys.model_dump_json(indent=2))
        return
    for k in keys.items:
        state = "revoked" if k.revoked_at else ("expires " + k.expires_at.isoformat() if k.expires_at else "active")
        galleries = ",".join(k.galleries) if k.galleries else "*"
        typer.echo(f"{k.id:>4}  {k.name:<24}  fdb_{k.prefix}_...  {','.join(k.scopes):<22}  {galleries:<16}  {state}")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or name.")]) -> None:
    """Revoke a key: refused at once by new servers, within FACEDB_AUTH_CACHE_S by running ones."""
    with _database(check=True) as db:
        found = auth.find_key(db, key=key)
        auth.revoke_key(db, key_id=found.id)
        _audit(db, "revoke_key", key_id=found.id, name=found.name)
    typer.echo(f"revoked key {found.id} {found.name!r}")


@keys_app.command("crop-key")
def keys_crop_key() -> None:
    """Print a new random key for FACEDB_CROP_KEY (encryption of stored face crops); keep it as safe as the data."""
    from service.crypto import new_key  # noqa: PLC0415 - only this command needs it

    typer.echo(new_key())


TRAINING_COMMANDS = ("train", "evaluate", "calibrate", "import-dlib", "export-onnx")
"""Commands that live in `embedding.train` (torch, datasets, heads): loaded only when one of them, or the
command list, is asked for, so that `facedb serve` and the other service commands never import them."""


def build_app(argv: list[str]) -> typer.Typer:
    """The `facedb` app for this command line (the training commands are added when it may need them)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command in TRAINING_COMMANDS:
        from embedding.train.cli import register  # noqa: PLC0415 - training code only for training commands

        register(app)
    return app


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_app(sys.argv[1:])()
    except ValidationError as exc:  # a FACEDB_* setting (environment or .env) that does not validate
        typer.secho(f"error: {_problems(exc)}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
