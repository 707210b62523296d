"""factsheet/build.py: every figure it prints comes from its inputs, a missing one stops it, the committed PDF is current.

The generator runs on a small synthetic set of inputs in tmp_path (results.json files, a recipe config, a training
run's config.yml and train.log) with distinctive numbers, so each one can be looked for in the generated LaTeX.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from factsheet import measure
from factsheet.build import PDF_NAME, ZIP_NAME, build
from factsheet.inputs import MissingFigure
from factsheet.manifest import DEFAULT_MANIFEST, FACTSHEET_DIR, load_manifest
from factsheet.measure import make_timing_data, refresh, sha256
from factsheet.tables import generate
from models import MODEL_NAME, TEAM_NUMBER
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MAIN_TEX = FACTSHEET_DIR / "factsheet.tex"

BENCH = {  # row id -> set -> (PSNR, SSIM, images): distinctive values, rounded the way the tables print them
    "base": {"Set5": (21.4321, 0.61234, 5), "Set14": (22.5432, 0.62345, 14)},
    "net": {"Set5": (31.9876, 0.90123, 5), "Set14": (30.8765, 0.89012, 14)},
}
CHALLENGE = {
    "valid_ave_psnr": 12.3456,  # against a stand-in HR: declared not measured, must never be printed
    "valid_ave_runtime": 4321.987,
    "num_parameters": 0.123456,
    "flops": 7.654321,
    "activations": 198.7612,
    "valid_memory": 543.219,
    "num_conv": 77,
    "valid_num_images": 1,
    "fvcore_total_flops": 7.7777,
    "thop_flops": 7.6012,
    "device": "cpu",
    "backend": "fast",
    "memory_measure": "peak resident memory (test)",
    "complexity_input": [1, 3, 256, 256],
}
CHALLENGE_PRINTED = ["4321.99", "0.123", "7.65", "198.76", "543.22", "77", "7.78", "7.60"]
REPORTED_PRINTED = ["30.01 / 0.8801", "27.02 / 0.7702", "25.03 / 0.7603", "28.04", "66.05", "0.111"]
TRAIN_LOG = """\
2030-01-01 00:00:00 training images: 17 (3 skipped: smaller than the 96-pixel HR patch)
2030-01-01 00:00:05 training synth from iteration 0 to 777 on cpu x1 process(es), precision fp32, online fusion True
2030-01-01 00:30:05 iter 50 loss 0.12345 lr 1.000e-03
2030-01-01 01:00:05 saved iteration 60
2030-01-01 01:00:05 stopping at iteration 60: max_minutes 60.0 reached
2030-01-02 00:00:00 resumed from runs/r1/models/last.pth at iteration 60
2030-01-02 00:00:01 training images: 17 (3 skipped: smaller than the 96-pixel HR patch)
2030-01-02 00:00:02 training synth from iteration 60 to 777 on cpu x1 process(es), precision fp32, online fusion True
2030-01-02 00:15:02 iter 100 loss 0.06789 lr 5.000e-04
2030-01-02 00:30:02 validation at 123, PSNR_Y of the EMA weights: Set5 29.876, Set14 27.654 (best)
2030-01-02 00:30:02 saved iteration 123
"""  # sessions of 1 h and 0.5 h: 1.50 wall-clock hours, x 3 threads = 4.50 core-hours


def _benchmark_entry(row_id: str) -> dict:
    return {
        "benchmark": {
            name: {"psnr_y": p, "ssim_y": s, "num_images": n, "ave_runtime": 1.0}
            for name, (p, s, n) in BENCH[row_id].items()
        },
        "benchmark_info": {"device": "cpu", "backend": "fast"},
    }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A manifest and every file it names, in tmp_path; returns the manifest's path."""
    meas = tmp_path / "measurements"
    ckpt = tmp_path / "net.pth"
    ckpt.write_bytes(b"synthetic weights")
    _write_json(meas / "base" / "results.json", {"bicubic": _benchmark_entry("base")})
    _write_json(meas / "net" / "results.json", {"netmodel": _benchmark_entry("net")})
    _write_json(meas / "net" / "measured.json", {"checkpoint_sha256": sha256(ckpt)})
    _write_json(meas / "challenge" / "results.json", {"netmodel": CHALLENGE})
    _write_json(meas / "challenge" / "measured.json", {"checkpoint_sha256": sha256(ckpt), "cpu_count": 2})
    recipe = {**TrainConfig().to_dict(), "stage": "scratch", "batch_size": 48, "total_iters": 654_321}
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    run_config = {
        **TrainConfig().to_dict(),
        "lr_patch": 24,
        "batch_size": 9,
        "total_iters": 777,
        "threads": 3,
    }
    run_config.update(scheduler="cosine", lr=3e-3, min_lr=2e-6, train_sources=["synthetic/T91"])
    (run / "config.yml").write_text(yaml.safe_dump(run_config))
    (run / "train.log").write_text(TRAIN_LOG)
    manifest = {
        "benchmark": {
            "sets": ["Set5", "Set14"],
            "not_measured": {"Urban100": "reason-U is why"},
            "rows": [
                {
                    "id": "base",
                    "label": "Base",
                    "entry": "bicubic",
                    "command": "python test_demo.py --x base",
                },
                {
                    "id": "net",
                    "label": "Net",
                    "entry": "netmodel",
                    "checkpoint": str(ckpt),
                    "trained_by": [str(run)],
                    "command": "python test_demo.py --x net",
                },
            ],
        },
        "challenge": {
            "id": "challenge",
            "entry": "netmodel",
            "checkpoint": str(ckpt),
            "lr_image": str(tmp_path / "0853x4.png"),
            "command": "python test_demo.py --x challenge",
            "not_measured": {"valid_ave_psnr": "reason-P is why"},
        },
        "reported": {
            "source": "the authors (test)",
            "benchmark": {"Set5": [30.01, 0.8801], "Set14": [27.02, 0.7702], "Urban100": [25.03, 0.7603]},
            "challenge": {"valid_ave_psnr": 28.04, "valid_ave_runtime": 66.05, "num_parameters": 0.111},
        },
        "recipe": [str(tmp_path / "recipe.yml")],
    }
    path = meas / "manifest.yml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _build(manifest_path: Path, **kwargs):
    manifest = load_manifest(manifest_path, root=manifest_path.parents[1], model_name="netmodel")
    return build(
        manifest, out_dir=manifest_path.parents[1] / "out", main_tex=MAIN_TEX, with_pdf=False, **kwargs
    )


def _tex(out: Path, name: str) -> str:
    return (out / "generated" / name).read_text()


def _data_rows(tex: str) -> list[list[str]]:
    """The cells of a table's data rows (between \\midrule and \\bottomrule), notes' superscripts removed."""
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0].replace("\\midrule", "")
    rows = [line.rstrip(" \\") for line in body.splitlines() if "&" in line]
    return [[re.sub(r"\\textsuperscript\{[a-z]\}", "", c).strip() for c in r.split(" & ")] for r in rows]


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", text)


def test_every_table_cell_comes_from_its_input(inputs):
    built = _build(inputs)
    out = inputs.parents[1] / "out"
    allowed = {f"{p:.2f}" for r in BENCH.values() for p, _s, _n in r.values()}
    allowed |= {f"{s:.4f}" for r in BENCH.values() for _p, s, _n in r.values()}
    allowed |= {n for text in REPORTED_PRINTED for n in _numbers(text)}
    allowed |= {"5", "14", "100", "1", "0"}  # only in names (Set5, Set14, Urban100), never as figures
    table1 = _data_rows(_tex(out, "table_benchmark.tex"))
    assert [r[0] for r in table1] == ["Base", "Net", "LKDN-S, reported by the authors"]
    for row_id, row in zip(("base", "net"), table1, strict=False):
        expected = [f"{p:.2f} / {s:.4f}" for p, s, _n in BENCH[row_id].values()]
        assert row[1:] == [*expected, r"\textit{not measured}"]
    assert table1[2][1:] == REPORTED_PRINTED[:3]
    for row in table1:
        for cell in row[1:]:
            assert set(_numbers(cell)) <= allowed, cell

    table2 = _data_rows(_tex(out, "table_challenge.tex"))
    measured, reported = table2
    assert measured[1:] == [r"\textit{not measured}", "4321.99", "0.123", "7.65", "198.76", "543.22", "77"]
    assert reported[1:] == ["28.04", "66.05", "0.111", "--", "--", "--", "--"]
    for figure in CHALLENGE_PRINTED:
        assert figure in _tex(out, "table_challenge.tex")
    assert set(built.generated.figures) >= {*CHALLENGE_PRINTED, "31.99", "0.9012"}


def test_not_measured_figures_print_their_reason_never_their_value(inputs):
    _build(inputs)
    out = inputs.parents[1] / "out"
    table1, table2 = _tex(out, "table_benchmark.tex"), _tex(out, "table_challenge.tex")
    assert "Urban100: reason-U is why." in table1
    assert "reason-P is why." in table2
    assert "12.35" not in table2 and "12.3456" not in table2  # the stand-in PSNR


def test_training_table_is_read_off_the_run(inputs):
    _build(inputs)
    tex = _tex(inputs.parents[1] / "out", "table_training.tex")
    rows = {r[0]: r[1:] for r in _data_rows(tex)}
    recipe, run = 0, 1
    assert rows["Batch size"] == ["48", "9"]
    assert rows["Iterations"] == ["654,321", "123 of 777"]
    assert rows["HR / LR patch"][run] == "96 / 24"
    assert rows["Learning rate"][run] == r"$3\times10^{-3}$ $\to$ $2\times10^{-6}$, cosine"
    assert rows["HR images used"][run].startswith("17 of 20")
    assert rows["Sessions"] == ["--", "2"]
    assert rows["Wall-clock hours"] == ["--", "1.50"]
    assert rows["CPU core-hours"] == ["--", "at most 4.50"]  # two sessions: threads of the last
    assert rows["Last training loss"][run] == "0.0679 (iteration 100)"
    assert rows["Last validation (PSNR\\_Y, EMA)"][run] == "Set5 29.876, Set14 27.654 (iteration 123)"
    assert rows["Training data"][run] == r"{\scriptsize \texttt{synthetic/\allowbreak{}T91}}"
    assert rows["Hardware"][recipe] == "--"


def test_a_changed_input_changes_the_tex(inputs):
    _build(inputs)
    out = inputs.parents[1] / "out"
    assert "21.43 / 0.6123" in _tex(out, "table_benchmark.tex")
    results = inputs.parent / "base" / "results.json"
    data = json.loads(results.read_text())
    data["bicubic"]["benchmark"]["Set5"]["psnr_y"] = 23.9876
    results.write_text(json.dumps(data))
    log = inputs.parents[1] / "runs" / "r1" / "train.log"
    log.write_text(TRAIN_LOG + "2030-01-02 01:00:02 iter 150 loss 0.05555 lr 1.000e-04\n")
    _build(inputs)
    table1 = _tex(out, "table_benchmark.tex")
    assert "23.99 / 0.6123" in table1 and "21.43" not in table1
    training = _tex(out, "table_training.tex")
    assert "150 of 777" in training and "2.00" in training and "0.0556 (iteration 150)" in training


@pytest.mark.parametrize(
    ("row", "path", "field"),
    [
        ("net", ("netmodel", "benchmark", "Set14", "ssim_y"), "benchmark.Set14.ssim_y"),
        ("base", ("bicubic", "benchmark", "Set5"), "benchmark.Set5.psnr_y"),
        ("challenge", ("netmodel", "flops"), "flops"),
        ("challenge", ("netmodel", "valid_memory"), "valid_memory"),
    ],
)
def test_a_missing_figure_stops_the_build_naming_it_and_its_command(inputs, row, path, field):
    results = inputs.parent / row / "results.json"
    data = json.loads(results.read_text())
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    results.write_text(json.dumps(data))
    with pytest.raises(MissingFigure) as err:
        _build(inputs)
    message = str(err.value)
    assert f"no {field} " in message and f"python factsheet/build.py --refresh {row}" in message
    assert "python test_demo.py --x " + row in message
    assert not (inputs.parents[1] / "out").exists()  # nothing half-written


def test_a_figure_becomes_required_when_its_declaration_goes(inputs):
    manifest = yaml.safe_load(inputs.read_text())
    del manifest["challenge"]["not_measured"]
    inputs.write_text(yaml.safe_dump(manifest))
    entry = json.loads((inputs.parent / "challenge" / "results.json").read_text())
    del entry["netmodel"]["valid_ave_psnr"]
    (inputs.parent / "challenge" / "results.json").write_text(json.dumps(entry))
    with pytest.raises(MissingFigure, match="no valid_ave_psnr .*--refresh challenge"):
        _build(inputs)


def test_results_older_than_their_checkpoint_stop_the_build(inputs):
    (inputs.parents[1] / "net.pth").write_bytes(b"retrained weights")
    with pytest.raises(MissingFigure, match=r"net.pth changed since .*--refresh net"):
        _build(inputs)


def test_a_row_whose_checkpoint_does_not_exist_yet_says_what_to_do(inputs):
    shutil.rmtree(inputs.parent / "net")
    (inputs.parents[1] / "net.pth").unlink()
    with pytest.raises(MissingFigure, match=r"net/results.json does not exist .*put the checkpoint there"):
        _build(inputs)


def test_the_command_line_stops_with_one_line(inputs):
    (inputs.parent / "challenge" / "results.json").unlink()
    proc = subprocess.run(
        [sys.executable, "factsheet/build.py", "--manifest", str(inputs), "--no_pdf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "challenge/results.json does not exist" in lines[0] and "--refresh challenge" in lines[0]


def test_the_zip_holds_the_tex_sources_and_is_reproducible(inputs):
    built = _build(inputs)
    first = built.zip_path.read_bytes()
    with zipfile.ZipFile(built.zip_path) as archive:
        names = sorted(archive.namelist())
        assert names == sorted(["factsheet.tex", *(f"generated/{n}" for n in built.generated.files)])
        for name in names:
            assert archive.read(name) == (built.zip_path.parent / name).read_bytes()
    assert _build(inputs).zip_path.read_bytes() == first


def test_without_pdflatex_it_still_writes_the_tex_and_the_zip(inputs, monkeypatch):
    import factsheet.build

    monkeypatch.setattr(factsheet.build.shutil, "which", lambda name: None)
    manifest = load_manifest(inputs, root=inputs.parents[1], model_name="netmodel")
    built = build(manifest, out_dir=inputs.parents[1] / "out", main_tex=MAIN_TEX)
    assert built.pdf_path is None and built.zip_path.is_file()
    assert not (inputs.parents[1] / "out" / PDF_NAME).exists()
    assert all(path.is_file() for path in built.tex_files)


@pytest.mark.skipif(
    shutil.which("pdflatex") is None
    and not os.environ.get("CI"),  # CI installs it (.ci/run): never skipped there
    reason="pdflatex is not installed (Debian: texlive-latex-*)",
)
def test_the_pdf_compiles_and_shows_the_inputs(inputs):
    pypdf = pytest.importorskip("pypdf")
    manifest = load_manifest(inputs, root=inputs.parents[1], model_name="netmodel")
    built = build(manifest, out_dir=inputs.parents[1] / "out", main_tex=MAIN_TEX, with_pdf=True)
    text = re.sub(r"\s+", "", " ".join(page.extract_text() for page in pypdf.PdfReader(built.pdf_path).pages))
    for figure in [*built.generated.figures, *REPORTED_PRINTED]:
        assert re.sub(r"\s+", "", figure) in text, figure
    assert "12.35" not in text


def test_refresh_measures_only_missing_or_stale_rows_unless_named(inputs, monkeypatch):
    measured = []
    monkeypatch.setattr(measure, "measure", lambda row, manifest: measured.append(row.id))
    manifest = load_manifest(inputs, root=inputs.parents[1], model_name="netmodel")
    assert refresh(manifest, []) == [] and measured == []
    (inputs.parents[1] / "net.pth").write_bytes(b"retrained weights")
    (inputs.parent / "base" / "results.json").unlink()
    assert refresh(manifest, []) == ["base", "net", "challenge"]  # the challenge row uses net.pth too
    assert refresh(manifest, ["net"]) == ["net"]
    assert measured == ["base", "net", "challenge", "net"]


def test_timing_data_is_a_div2k_layout_with_a_stand_in_hr(tmp_path):
    import cv2
    import numpy as np

    lr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    lr_path = tmp_path / "0853x4.png"
    cv2.imwrite(str(lr_path), lr)
    data = make_timing_data(lr_path, tmp_path / "data")
    assert (data / "DIV2K_valid_LR" / "0853x4.png").read_bytes() == lr_path.read_bytes()
    assert cv2.imread(str(data / "DIV2K_valid_HR" / "0853.png")).shape == (28, 36, 3)


# ------------------------------------------------------------------------------------ the committed factsheet


def _committed_text() -> str:
    pypdf = pytest.importorskip("pypdf", reason="pypdf reads the committed PDF (requirements-dev.txt)")
    pdf = FACTSHEET_DIR / PDF_NAME
    assert pdf.is_file(), (
        f"{pdf} is missing: build it with `python factsheet/build.py --refresh` (needs every checkpoint of "
        "factsheet/measurements/manifest.yml, including model_zoo's)"
    )
    reader = pypdf.PdfReader(pdf)
    assert len(reader.pages) > 0
    return re.sub(r"\s+", "", " ".join(page.extract_text() for page in reader.pages))


def test_the_committed_pdf_shows_the_committed_measurements():
    text = _committed_text()
    manifest = load_manifest(DEFAULT_MANIFEST)
    for row in manifest.rows:
        entry = json.loads(row.results_path.read_text())[row.entry]
        for name in manifest.sets:
            figures = entry["benchmark"][name]
            assert f"{figures['psnr_y']:.2f}/{figures['ssim_y']:.4f}" in text, (row.id, name)
    entry = json.loads(manifest.challenge.results_path.read_text())[manifest.challenge.entry]
    for key, spec in (("num_parameters", ".3f"), ("flops", ".2f"), ("activations", ".2f"), ("num_conv", "d")):
        assert format(entry[key], spec) in text, key
    for key in ("valid_ave_runtime", "valid_memory"):
        assert f"{entry[key]:.2f}" in text, key


def test_the_committed_factsheet_is_what_its_inputs_generate():
    text = _committed_text()
    manifest = load_manifest(DEFAULT_MANIFEST)
    generated = generate(manifest, TEAM_NUMBER, MODEL_NAME)
    for name, content in generated.files.items():
        committed = FACTSHEET_DIR / "generated" / name
        assert committed.read_text() == content, f"{committed} is stale: run `python factsheet/build.py`"
    for figure in generated.figures:
        assert re.sub(r"\s+", "", figure) in text, figure
    with zipfile.ZipFile(FACTSHEET_DIR / ZIP_NAME) as archive:
        for name in archive.namelist():
            assert archive.read(name) == (FACTSHEET_DIR / name).read_bytes(), name


def test_the_committed_pdf_has_the_team_section():
    """The NTIRE template's team details, from factsheet/team.yml, read back from the PDF."""
    text = _committed_text()
    team = yaml.safe_load((FACTSHEET_DIR / "team.yml").read_text())
    for field in (team["team_name"], f"{team['leader']}(leader)", *team["members"], *team["codalab_users"],
                  *team["affiliations"].values(), team["code"]):  # fmt: skip
        assert re.sub(r"\s+", "", field) in text, field
    for heading in (
        "Teamdetails",
        "Method",
        "Training",
        "Testing",
        "Additionaldata",
        "Novelty",
        "Comparison",
    ):
        assert heading in text, heading
    assert "ARCHITECTURE.md" not in text and "referencematerial" not in text


def test_a_team_file_missing_a_field_is_one_error(tmp_path):
    team = yaml.safe_load((FACTSHEET_DIR / "team.yml").read_text())
    del team["codalab_users"]
    (tmp_path / "team.yml").write_text(yaml.safe_dump(team))
    with pytest.raises(MissingFigure, match="team.yml: no codalab_users"):
        generate(load_manifest(DEFAULT_MANIFEST), TEAM_NUMBER, MODEL_NAME, tmp_path / "team.yml")


def test_every_footnote_mark_is_referred_to():
    """A note under a table is there because a cell or header carries its letter."""
    for name in ("table_benchmark.tex", "table_challenge.tex", "table_training.tex"):
        tex = (FACTSHEET_DIR / "generated" / name).read_text()
        body, _, notes = tex.partition("\\begin{minipage}")
        for letter in re.findall(r"\\textsuperscript\{([a-z])\}\\,", notes):
            assert f"\\textsuperscript{{{letter}}}" in body, (name, letter)
