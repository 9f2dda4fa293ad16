"""The `facedb` command as a user runs it: a real subprocess, real files, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ATT, REPO, att_image, image_bytes, require_data


def facedb(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "service", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"facedb {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli_env(empty_db_url: str, tmp_path: Path) -> dict[str, str]:
    return os.environ | {"FACEDB_DATA_DIR": str(tmp_path / "data"), "FACEDB_DATABASE_URL": empty_db_url}


def make_people(root: Path, n: int, per: int) -> None:
    for i in range(n):
        person = root / f"person{i}"
        person.mkdir(parents=True)
        for j in range(per):
            (person / f"{j}.png").write_bytes(image_bytes(100 * i + j))
    (root / "person0" / "notes.txt").write_text("not an image, skipped by extension")
    (root / "person1" / "broken.jpg").write_bytes(b"this is text")


def test_cli_flow(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = facedb("identify", str(tmp_path), env=cli_env, check=False)
    assert out.returncode != 0

    # before migrating, commands refuse with the fix in one line, not a traceback
    out = facedb("identify", "nothing.png", env=cli_env, check=False)
    assert out.returncode == 1
    assert "facedb db upgrade" in out.stderr
    assert "Traceback" not in out.stderr

    assert "at revision" in facedb("db", "upgrade", env=cli_env).stdout
    current = facedb("db", "current", env=cli_env).stdout
    assert current.split()[1] == current.split()[3]

    people = tmp_path / "people"
    make_people(people, 3, 2)
    out = facedb("enroll", str(people), "--no-detect", "--allow-conflict", "--allow-mismatch", env=cli_env)
    assert "3 identities, 6 faces accepted, 1 rejected (unsupported_image: 1)" in out.stdout
    assert "person1/broken.jpg: unsupported_image" in out.stderr

    # enrolling again: every image is a duplicate, nothing is added
    out = facedb("enroll", str(people), "--no-detect", "--allow-conflict", "--allow-mismatch", env=cli_env)
    assert "0 faces accepted, 7 rejected" in out.stdout

    out = facedb("identify", str(people / "person2" / "1.png"), "--top-k", "2", "--no-detect", env=cli_env)
    lines = out.stdout.splitlines()
    assert "person2" in lines[0]
    assert lines[-1].startswith("match: person2")

    out = facedb(
        "verify", str(people / "person1" / "0.png"), str(people / "person1" / "0.png"), "--no-detect", env=cli_env
    )
    assert out.stdout.startswith("same person")

    out = facedb("identify", str(people / "person1" / "broken.jpg"), env=cli_env, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error:")
    assert "[unsupported_image]" in out.stderr
    assert "Traceback" not in out.stderr

    out = facedb("identify", str(tmp_path / "missing.png"), env=cli_env, check=False)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr

    out = facedb("identify", str(people / "person2" / "1.png"), "--gallery", "nope", env=cli_env, check=False)
    assert "[gallery_not_found]" in out.stderr


def test_enroll_prints_and_counts_possible_duplicate_warnings(cli_env: dict[str, str], tmp_path: Path) -> None:
    """One person filed under two folders, with the conflict bar raised out of reach: the second is enrolled with a
    possible_duplicate warning naming the first, printed and counted."""
    folders = tmp_path / "people"
    for name, photo in (("first", 1), ("second", 2)):
        (folders / name).mkdir(parents=True)
        (folders / name / "1.pgm").write_bytes(att_image(1, photo).read_bytes())
    env = cli_env | {"FACEDB_CONFLICT_FPIR": "1e-9"}
    facedb("db", "upgrade", env=env)
    out = facedb("enroll", str(folders), env=env)
    assert "warning second/1.pgm: possible_duplicate" in out.stderr and "(first)" in out.stderr, out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    assert summary == "2 identities, 2 faces accepted, 0 rejected (none); 1 accepted with a possible_duplicate warning"


def test_readme_att_example_enrols_every_person_without_conflicts(cli_env: dict[str, str]) -> None:
    """`facedb enroll ../shared/data/att_faces` with default settings: 40 people, none taken or warned of as another."""
    att = require_data(ATT)
    facedb("db", "upgrade", env=cli_env)
    out = facedb("enroll", str(att), env=cli_env)
    assert "identity_conflict" not in out.stdout + out.stderr
    assert "face_mismatch" not in out.stdout + out.stderr
    assert "possible_duplicate" not in out.stdout + out.stderr  # each person's photos go in one request
    summary = out.stdout.strip().splitlines()[-1]
    accepted = int(summary.split(" faces accepted")[0].split()[-1])
    assert summary.startswith("40 identities") and accepted >= 390, summary
