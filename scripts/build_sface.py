"""Write ``embedding/models/sface.onnx``: SFace's pinned int8 weights with a facedb card (uncalibrated).

    python -m scripts.build_sface [--out embedding/models/sface.onnx]
    python -m scripts.build_sface --render-only      # writes embedding/models/sface.md from the card alone

The graph is `embedding.sface.sface_graph` (weights unchanged, runnable by any onnxruntime); the card says how
faces are prepared (`embedding.sface.SFACE_INPUT`), where the weights come from, and what is not known about
their training data. Thresholds are then measured by `facedb calibrate` and the 1:N table by
`python -m benchmarks.open_set calibrate` (both printed in the card's notes).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from embedding.card import ModelCard
from embedding.embedder import read_card, sface_model_path
from embedding.onnx_embedder import graph_sha256, write_onnx_card
from embedding.onnx_quant import ZOO_PACKAGE
from embedding.openset import GREY_CHROMA, OpenSetCalibration
from embedding.sface import SFACE_FILE, SFACE_INPUT, SFACE_SHA256, sface_graph

REPO = Path(__file__).resolve().parent.parent

TRAINING = {
    "source": f"{ZOO_PACKAGE} {SFACE_FILE} (sha256 {SFACE_SHA256}), the OpenCV model zoo's "
    "face_recognition_sface_2021dec int8 file",
    "licence": "Apache-2.0 (OpenCV model zoo); commercial use allowed",
    "paper": "Zhong et al., SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition, IEEE TIP 2021",
    "architecture": "MobileFaceNet, 128-d output",
    "data": "not stated by the model zoo (the paper trains on CASIA-WebFace, VGGFace2 or MS1MV2); overlap of its "
    "training people with LFW or CelebA people cannot be ruled out, so LFW and CelebA figures may be optimistic",
}


def build(out: Path) -> ModelCard:
    """Write the uncalibrated model and return its card."""
    model = sface_graph()
    card = ModelCard(
        name="sface",
        version=graph_sha256(model)[:12],
        arch="onnx",
        arch_params={"input": "data", "output": "fc1", "source": SFACE_FILE},
        embedding_dim=128,
        input=SFACE_INPUT,
        training=TRAINING,
        metrics={},
        thresholds={},
        default_threshold=1.0,
        default_threshold_far=0.0,
        notes="UNCALIBRATED: run `facedb calibrate` before serving this model.",
    )
    write_onnx_card(model, card, out)
    return card


def _gallery_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| photos per person | identity score | people | faces | rank-1 | rank-5 "
        "| FNIR at FPIR 1e-1 / 1e-2 / 1e-3 (threshold) | calibrated at 1e-2: threshold, FPIR, FNIR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in rows:
        fnir = " / ".join(f"{v['fnir']:.3f} ({v['threshold']:.3f})" for v in g["fnir_at_fpir"].values())
        c = g["calibrated"]["0.01"]
        lines.append(
            f"| {g['photos_per_person']} | {g.get('identity_score', 'best')} | {g['identities']} | {g['faces']} "
            f"| {g['rank1']:.3f} | {g['rank5']:.3f} "
            f"| {fnir} | {c['threshold']:.3f}, {c['fpir']:.4f}, {c['fnir']:.3f} |"
        )
    return lines


INTRO = [
    "SFace, a MobileFaceNet (128-d) trained with the sigmoid-constrained hypersphere loss, from OpenCV's model zoo.",
    "facedb's default face embedder until the fusion of dlib's ResNet and SFace (`dlib_sface.md`) replaced it.",
    "Written by `python -m scripts.build_sface`, calibrated by",
]

BASELINES = {"dlib:flip": "dlib's ResNet with mirror TTA", "sface": "SFace alone"}
"""What a card's baseline view is, in words."""


def render(card: ModelCard, *, intro: Sequence[str] = INTRO) -> str:
    """The model card as Markdown, every number from the card; ``intro`` opens it and ends with "calibrated by"."""
    cal = card.metrics.get("calibration", {})
    ev = card.metrics.get("open_set_evaluation", {})
    open_set = card.open_set
    lines = [
        f"# Model card: {card.name}@{card.version}",
        "",
        *intro,
        f"`{cal.get('by', 'python -m benchmarks.open_set calibrate')}`.",
        "",
        "## Source and licence",
        "",
        *[f"- **{k}**: {v}" for k, v in card.training.items()],
        "",
        "## Input",
        "",
        f"{card.input.height}x{card.input.width} RGB, values 0-255 (the graph centres them), aligned to the "
        f"`{card.input.face_template}` five-point template with `{card.input.landmarks}` landmarks; "
        f"mirror-image augmentation {'on' if card.input.flip else 'off'}.",
        "",
        "## Verify (1:1) thresholds",
        "",
        f"Measured on {cal.get('data', '?')}; TAR over its {cal.get('genuine_pairs', '?')} same-person pairs.",
        "",
        "| FAR | threshold | TAR |",
        "|---|---|---|",
        *[f"| {k} | {v['threshold']:.4f} | {v['tar']:.4f} |" for k, v in cal.get("per_far", {}).items()],
        "",
        f"Default: {card.default_threshold:.4f} at FAR {card.default_threshold_far:g}.",
        "",
    ]
    if open_set is not None:
        lines += [
            "## Identify (1:N) thresholds",
            "",
            "Identify sets its threshold for a target FPIR at the gallery's current size (embedding/openset.py):",
            "FPIR(N, t) = 1 - (1 - F(t))^(k N), with F the 1:1 impostor tail below and k the effective comparisons",
            "per gallery face, measured on galleries of several sizes of the calibration split.",
            "",
            f"k by gallery size: {open_set.comparisons_per_face}. 1:1 table measured down to FAR "
            f"{open_set.measured_far:g}, extrapolated below along its exponential tail.",
            "",
            *_condition_lines(open_set),
        ]
    if ev:
        lines += [
            "## Open-set identification (evaluation split)",
            "",
            f"{ev['data']}. Strangers: up to 5 photos of each person, searched against the gallery without their "
            "own photos. Calibrated thresholds come from the calibration split alone.",
            "",
            *_gallery_table(ev["galleries"]),
            "",
        ]
        if ev.get("baseline"):
            lines += [
                f"Baseline in the same run: `{ev['baseline']['view']}` "
                f"({BASELINES.get(ev['baseline']['view'], 'another view')}).",
                "",
            ]
            lines += [*_gallery_table(ev["baseline"]["galleries"]), ""]
    lines += _enrolment_lines(card.metrics)
    lines += ["## Notes", "", card.notes, ""]
    return "\n".join(lines)


def _condition_lines(open_set: OpenSetCalibration) -> list[str]:
    """The photo-condition tables (grey, low resolution) beside the colour one, at the FARs they share."""
    if not open_set.condition_thresholds:
        return []
    names = list(open_set.condition_thresholds)
    fars = [
        f
        for f in open_set.far_thresholds
        if float(f) >= 1e-6 and all(f in open_set.condition_thresholds[n] for n in names)
    ]
    return [
        f"Photo conditions: a grey face (mean chroma below {GREY_CHROMA:g} of 255: a black-and-white or infrared "
        "photo) is decided with its own impostor table (identify and the conflict check), measured on the same "
        "calibration photos in grey:",
        "",
        "| FAR | colour | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
        *[
            f"| {float(f):.0e} | {open_set.far_thresholds[f]:.4f} | "
            + " | ".join(f"{open_set.condition_thresholds[n][f]:.4f}" for n in names)
            + " |"
            for f in fars
        ],
        "",
    ]


def _photos(e: dict[str, Any]) -> str:
    n = e["photos_per_person"]
    return "every photo, one at a time" if n is None else "1" if n == 1 else f"up to {n}"


def _named(e: dict[str, Any]) -> str:
    """Warned / named columns; cards measured before enrolment warned of possible duplicates have neither."""
    if "reenrol_named" not in e:
        return "| - | - |"
    return f"| {e['warning_rate']:.2%} | {e['reenrol_named']:.1%} |"


def _enrolment_lines(metrics: dict[str, Any]) -> list[str]:
    """The card's enrolment section: the library's runs and, where recorded, one through `facedb enroll`."""
    enrolment = metrics.get("enrolment")
    if not enrolment:
        return []
    lines = [
        "## Enrolment checks (every person of the shared data)",
        "",
        "`benchmarks/open_set.py`: every person enrolled in data-set order with the service's checks, then each",
        "person's next photo enrolled again under a new id (caught when the conflict check names them; named when a",
        "refusal or a `possible_duplicate` warning does; warned: people whose first enrolment drew a warning).",
        "",
        "| photos per person | people | refused as conflicts | enrolled again: caught | warned | named "
        "| conflict FPIR |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {_photos(e)} | {e['people']} | {e['people_refused_as_conflicts']} ({e['refusal_rate']:.2%}) "
            f"| {e['reenrol_caught']:.1%} of {e['reenrolled']} {_named(e)} {e['conflict_fpir']:g} |"
            for e in enrolment.values()
        ],
        "",
    ]
    cli = metrics.get("enrolment_facedb_enroll")
    if cli:
        lines += [
            f"Through `facedb enroll` (`python -m benchmarks.open_set folders`: one folder per identity, each "
            f"identity's photos in one request as the README enrols a folder, each person's last photo held back and "
            f"then enrolled in a folder of its own), {cli['model']} at conflict FPIR {cli['conflict_fpir']:g}: "
            f"{cli['identities_with_a_conflict_naming_someone_else']} of {cli['identities']} identities "
            f"({cli['wrong_conflict_rate']:.2%}) refused as a conflict with someone else, {cli['identities_warned']} "
            f"warned ({cli['warning_rate']:.2%}); {cli['reenrol_caught']:.1%} of {cli['reenrolled']} people enrolled "
            f"again caught, {cli['reenrol_named']:.1%} named. First run: {cli['first_summary']}.",
            "",
        ]
    return lines


def card_cli(
    description: str, default_out: Path, build_model: Callable[[Path], ModelCard], intro: Sequence[str] = INTRO
) -> None:
    """A model script's command line: write the model (unless ``--render-only``), then its Markdown card."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--render-only", action="store_true", help="only write the .md card beside the model")
    args = parser.parse_args()
    if not args.render_only:
        card = build_model(args.out)
        print(f"wrote {args.out} ({card.name}@{card.version}, uncalibrated)")
    card = read_card(args.out)
    args.out.with_suffix(".md").write_text(render(card, intro=intro))
    print(f"wrote {args.out.with_suffix('.md')}")


def main() -> None:
    card_cli(__doc__.splitlines()[0], sface_model_path(), build)


if __name__ == "__main__":
    main()
