"""Re-index throughput and switch time, with a client calling identify throughout.

1. Enrol N real face images (LFW, or synthetic if the data is absent) under the default model A, in a
   temporary SQLite database.
2. Baseline, same run: the raw embedder on the same stored crops, no database (faces/s at the job's batch).
3. Start the real server; a client thread calls identify with an enrolled image the whole time.
4. Re-index to model B (the default model with perturbed weights, as after retraining) in this process,
   as `facedb reindex` does: faces re-embedded per second, the switch transaction's time, and the time until
   the server answers with B. Every answer must be 200 and score the enrolled probe ~1 under one model.

    python -m benchmarks.reindex_throughput [--faces 1000] [--out results.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.identify_latency import DATA_ROOT, machine_info, running_server, server_headers
from embedding.checkpoint import load_checkpoint, save_checkpoint, weights_version
from embedding.embedder import dlib_resnet_model_path
from embedding.facepath import decode_crop
from service.core import Upload
from service.db import crud, migrate
from service.db.engine import Database
from service.registry import open_embedder
from service.reindex import Reindexer
from service.runtime import build_runtime
from service.settings import Settings


def perturbed_model(path: Path) -> Path:
    model, card = load_checkpoint(dlib_resnet_model_path())
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    card = card.model_copy(update={"name": "bench-model-b", "version": weights_version(card.arch, model.state_dict())})
    save_checkpoint(path, model=model, card=card)
    return path


def face_files(n: int) -> list[Path]:
    lfw = DATA_ROOT / "lfw" / "images"
    if not lfw.is_dir():
        return []
    files: list[Path] = []
    for person in sorted(lfw.iterdir()):
        files.extend(sorted(person.iterdir())[:3])
        if len(files) >= n:
            break
    return files[:n]


def synthetic(i: int) -> bytes:
    from tests.conftest import image_bytes  # noqa: PLC0415 - only without the shared data

    return image_bytes(i, size=(250, 250), mode="RGB")


def enrol(settings: Settings, n: int) -> tuple[bytes, float]:
    """Enrol n faces, 3 per identity; returns one enrolled image (the probe) and the seconds taken."""
    files = face_files(n)
    rt = build_runtime(settings, batching=False)
    started = time.perf_counter()
    try:
        images = [f.read_bytes() for f in files] if files else [synthetic(i) for i in range(n)]
        for start in range(0, n, 3):
            ident = rt.service.create_identity("default", _identity(start))
            uploads = [Upload(f"{j}.jpg", d) for j, d in enumerate(images[start : start + 3])]
            # pre-cropped LFW images, no detection: this measures re-embedding, not the enrolment gates
            rt.service.enroll("default", ident.id, uploads, detect=False, allow_conflict=True)
    finally:
        rt.close()
    return images[0], time.perf_counter() - started


def _identity(i: int) -> Any:
    from service.schemas import IdentityCreate  # noqa: PLC0415

    return IdentityCreate(external_id=f"id{i}")


def raw_embed_rate(settings: Settings, db: Database, batch: int) -> float:
    with db.read() as session:
        rows = crud.faces_missing_templates(session, model_version_id=-1, after=0, limit=10_000)
    embedder = open_embedder(dlib_resnet_model_path(), settings)
    embedder.load()
    crops = [decode_crop(c.data, aligned=c.aligned).for_model(embedder.card.input) for _, c in rows if c is not None]
    embedder.embed(crops[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(crops), batch):
        embedder.embed(crops[i : i + batch])
    return len(crops) / (time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    info = machine_info()

    with tempfile.TemporaryDirectory(prefix="facedb-reindex-bench-") as tmp_s:
        tmp = Path(tmp_s)
        env = {"FACEDB_DATA_DIR": str(tmp / "data"), "FACEDB_DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}"}
        os.environ.update(env)
        settings = Settings(_env_file=None)
        db = Database(settings.resolved_database_url)
        migrate.upgrade(db.engine)
        probe, enrol_s = enrol(settings, args.faces)
        raw = raw_embed_rate(settings, db, settings.reindex_batch_size)
        model_b = perturbed_model(tmp / "model-b.pt")

        answers: list[tuple[float, int, str, float]] = []
        stop = threading.Event()
        with running_server(os.environ | env | {"FACEDB_INDEX_SYNC_INTERVAL_S": "1.0"}, tmp / "server.log", 120) as (
            url,
            _,
        ):
            import httpx  # noqa: PLC0415

            def client() -> None:
                with httpx.Client(base_url=url, timeout=30, trust_env=False, headers=server_headers(env)) as c:
                    while not stop.is_set():
                        r = c.post(
                            "/v1/galleries/default/identify",
                            files={"image": ("p.jpg", probe)},
                            data={"detect": "false"},
                        )
                        body = r.json() if r.status_code == 200 else {}
                        top = body.get("candidates", [{}])[0].get("score", -1.0) if body else -1.0
                        answers.append((time.perf_counter(), r.status_code, body.get("model_version", ""), top))

            thread = threading.Thread(target=client)
            thread.start()
            try:
                time.sleep(1.0)
                reindexer = Reindexer(db=db, settings=settings)
                t0 = time.perf_counter()
                mv = reindexer.register(model_b)
                job_id = reindexer.start_job(mv.id)
                result = reindexer.run(job_id)
                t_switch = time.perf_counter()
                job_s = t_switch - t0
                deadline = t_switch + 60
                while time.perf_counter() < deadline and not (answers and answers[-1][2].startswith("bench-model-b")):
                    time.sleep(0.02)
                time.sleep(0.5)
            finally:
                stop.set()
                thread.join()
        with db.read() as session:
            job = crud.get_job(session, job_id=job_id)
            assert job is not None
            switch_txn_s = job.switch_seconds
        db.dispose()

    first_b = next((t for t, _, label, _ in answers if label.startswith("bench-model-b")), None)
    failed = sum(1 for _, code, _, _ in answers if code != 200)
    low = sum(1 for _, code, _, score in answers if code == 200 and score < 0.999)
    labels = [label for _, code, label, _ in answers if code == 200]
    went_back = any(
        a.startswith("bench-model-b") and not b.startswith("bench-model-b") for a, b in itertools.pairwise(labels)
    )
    report = {
        "machine": info,
        "faces": args.faces,
        "enrol_s": enrol_s,
        "raw_embed_faces_per_s": raw,
        "reindex_faces_per_s": result.rate_per_s,
        "job_s": job_s,
        "switch_txn_ms": None if switch_txn_s is None else switch_txn_s * 1000,
        "switch_visible_after_s": None if first_b is None else first_b - t_switch,
        "identify_answers": len(answers),
        "failed_answers": failed,
        "answers_not_scoring_the_probe_1": low,
        "answers_went_back_to_old_model": went_back,
    }
    m = info
    print(f"machine: {m['cpu_model']}; {m['usable_cpus']} CPUs; torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"load average at start {m['loadavg_1_5_15']}")
    print(
        f"gallery: {args.faces} faces ({'LFW' if face_files(1) else 'synthetic'} 250x250), enrolled in {enrol_s:.1f} s"
    )
    print(
        f"baseline, raw embedder on the stored crops (no database), batch {settings.reindex_batch_size}: "
        f"{raw:.0f} faces/s"
    )
    print(
        f"re-index to model B: {result.rate_per_s or 0:.0f} faces/s; job {job_s:.1f} s in all (register, embed, switch)"
    )
    print(
        f"switch transaction: {report['switch_txn_ms']:.1f} ms; server answering with B "
        f"{report['switch_visible_after_s']:.2f} s after it (sync interval 1.0 s + index build)"
    )
    print(
        f"identify during the job: {len(answers)} answers, {failed} failed, {low} not scoring the enrolled probe ~1, "
        f"went back to the old model: {went_back}"
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    return 1 if failed or low or went_back or first_b is None else 0


if __name__ == "__main__":
    sys.exit(main())
