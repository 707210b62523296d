"""data/download_benchmarks.py against a local server: the layout test_demo reads, SHA-256 and pixel checks,
and nothing left behind by a failure."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from local_http import serve_files
from test_bad_input import _one_line_error
from test_download import _tar_gz

from data import download_benchmarks as db
from utils.errors import UserError
from utils.image.imresize import matlab_imresize

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(21, 26), (16, 16), (30, 17)]  # two not multiples of 4: cropped


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    images = {
        f"img_{i}.png": rng.integers(0, 256, (*size, 3), dtype=np.uint8) for i, size in enumerate(SIZES)
    }
    images["gray.png"] = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    return images


def _encoded(images: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {f"Tiny_HR/{name}": cv2.imencode(".png", img)[1].tobytes() for name, img in images.items()}


def _digest(images: dict[str, np.ndarray]) -> str:
    digests = []
    for img in images.values():
        img = img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4]
        rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)  # as cv2 wrote it
        digests.append(db.image_digest(rgb))
    return db.content_digest(digests)


def _path(source: db.Source) -> str:
    return source.url("")


@pytest.fixture
def server():
    with serve_files() as srv:
        yield srv


@pytest.fixture
def tiny_set(server, monkeypatch):
    """A 4-image set 'Tiny' served as the hub would serve it; returns (server, Source, archive bytes)."""
    archive = _tar_gz(_encoded(_images()))
    source = db.Source(
        "Tiny", "someone/Tiny", "0" * 40, "data/Tiny_HR.tar.gz", 4, 64, hashlib.sha256(archive).hexdigest()
    )
    server.files[_path(source)] = archive
    monkeypatch.setitem(db.SOURCES, "Tiny", source)
    return server, source, archive


def _run(server, tmp_path: Path, *extra: str) -> int:
    return db.main(
        [
            "--sets",
            "Tiny",
            "--benchmark_dir",
            str(tmp_path / "bench"),
            "--base_url",
            server.url,
            "--no_progress",
            *extra,
        ]
    )


def test_a_set_is_laid_out_as_test_demo_reads_it_and_a_rerun_fetches_nothing(tiny_set, tmp_path, capsys):
    server, _, _ = tiny_set
    assert _run(server, tmp_path) == 0
    folder = tmp_path / "bench" / "Tiny"
    for name, img in _images().items():
        hr = cv2.imread(str(folder / "HR" / name), cv2.IMREAD_UNCHANGED)
        lr = cv2.imread(str(folder / "LR_bicubic_x4" / name), cv2.IMREAD_UNCHANGED)
        cropped = img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4]
        np.testing.assert_array_equal(hr, cropped)
        np.testing.assert_array_equal(lr, matlab_imresize(cropped, 0.25))
    assert not (tmp_path / "bench" / ".archives").exists()  # the archive is removed once laid out
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["Tiny"]  # no lock, no staging left
    assert "Tiny ready, 4 HR/LR x4 pairs" in capsys.readouterr().out
    requests = len(server.requests)
    assert _run(server, tmp_path) == 0
    assert len(server.requests) == requests
    assert "complete (4 images), skipped" in capsys.readouterr().out

    from test_demo import select_benchmark

    pairs = select_benchmark(tmp_path / "bench")["Tiny"]
    assert len(pairs) == 4


def test_a_wrong_archive_is_refused_and_leaves_nothing(tiny_set, tmp_path, monkeypatch):
    server, source, _ = tiny_set
    monkeypatch.setitem(db.SOURCES, "Tiny", db.Source(**{**source.__dict__, "sha256": "1" * 64}))
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        _run(server, tmp_path)
    assert not (tmp_path / "bench").exists()


def test_a_set_with_no_known_hash_names_the_page_and_takes_sha256(tiny_set, tmp_path, monkeypatch):
    server, source, archive = tiny_set
    monkeypatch.setitem(db.SOURCES, "Tiny", db.Source(**{**source.__dict__, "sha256": None}))
    with pytest.raises(UserError) as err:
        _run(server, tmp_path)
    assert f"https://huggingface.co/datasets/someone/Tiny/blob/{'0' * 40}/data/Tiny_HR.tar.gz" in str(
        err.value
    )
    assert "--sha256 Tiny=" in str(err.value)
    assert not (tmp_path / "bench").exists() and not server.requests
    assert _run(server, tmp_path, "--sha256", f"Tiny={hashlib.sha256(archive).hexdigest()}") == 0


def test_pixels_are_the_check_where_no_archive_hash_is_known(tiny_set, tmp_path, monkeypatch, capsys):
    server, source, _ = tiny_set
    monkeypatch.setitem(db.SOURCES, "Tiny", db.Source(**{**source.__dict__, "sha256": None}))
    monkeypatch.setitem(db.CONTENT_SHA256, "Tiny", "2" * 64)
    with pytest.raises(UserError, match="HR pixels differ") as err:
        _run(server, tmp_path)
    assert f"--sha256 Tiny=<the SHA256 shown on {source.page}>" in str(err.value)
    assert not (tmp_path / "bench").exists()
    monkeypatch.setitem(db.CONTENT_SHA256, "Tiny", _digest(_images()))
    assert _run(server, tmp_path) == 0
    assert "pixels identical to the copy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "members, message",
    [
        ({"../evil.png": b"x"}, "unsafe member path"),
        (
            {"Tiny_HR/a.png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()},
            "1 images, expected 4",
        ),
        ({f"Tiny_HR/{i}.png": b"\0" * 64 for i in range(4)}, "not a decodable image"),
        ({"Tiny_HR/big.png": b"\0" * 200_000}, "declares 200000 bytes"),
    ],
    ids=["traversal", "count", "zero-filled", "oversized"],
)
def test_a_bad_archive_is_one_error_naming_it_and_leaves_no_set(
    tiny_set, tmp_path, monkeypatch, members, message
):
    server, source, _ = tiny_set
    archive = _tar_gz(members)
    server.files[_path(source)] = archive
    monkeypatch.setitem(
        db.SOURCES,
        "Tiny",
        db.Source(**{**source.__dict__, "sha256": hashlib.sha256(archive).hexdigest(), "max_side": 32}),
    )
    with pytest.raises(UserError, match=message) as err:
        _run(server, tmp_path)
    assert "Tiny" in str(err.value) and "re-run to download it again" in str(err.value)
    assert not (tmp_path / "bench").exists()  # nor the archive: a re-run downloads it again


def test_sets_without_a_source_name_from_dir_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "data.download_benchmarks", "--sets", "Manga109", "--benchmark_dir", str(tmp_path / "b")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    line = _one_line_error(done)
    assert "manga109.org" in line and "--from_dir FOLDER --name Manga109" in line
    assert not (tmp_path / "b").exists()


def test_from_dir_reproduces_the_shared_benchmark_and_recognises_its_pixels(benchmark_dir, tmp_path, capsys):
    assert (
        db.main(
            [
                "--from_dir",
                str(benchmark_dir / "Set5" / "HR"),
                "--name",
                "Set5",
                "--benchmark_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (
        "pixels identical to the copy this repository's Set5 figures were measured on"
        in capsys.readouterr().out
    )
    for lr in sorted((benchmark_dir / "Set5" / "LR_bicubic_x4").glob("*.png")):
        np.testing.assert_array_equal(
            cv2.imread(str(tmp_path / "Set5" / "LR_bicubic_x4" / lr.name)), cv2.imread(str(lr))
        )


def test_from_dir_training_set_is_hr_only_where_prepare_reads_it(tmp_path, capsys):
    src = tmp_path / "mine"
    src.mkdir()
    for name, img in _images().items():
        cv2.imwrite(str(src / name.replace(".png", ".bmp")), img)
    assert (
        db.main(["--from_dir", str(src), "--name", "Mine", "--train", "--train_dir", str(tmp_path / "train")])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "train" / "Mine").iterdir()) == sorted(_images())
    from data.prepare import list_hr_images

    assert len(list_hr_images([tmp_path / "train" / "Mine"])) == 4
    assert "Mine ready, 4 HR images" in capsys.readouterr().out


def test_a_killed_runs_staging_folder_is_removed_by_the_next(tiny_set, tmp_path):
    server, _, _ = tiny_set
    stale = tmp_path / "bench" / ".Tiny.extracting.abc123"
    (stale / "HR").mkdir(parents=True)
    assert _run(server, tmp_path) == 0
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["Tiny"]


def test_flags_of_the_two_modes_are_not_mixed(tmp_path):
    with pytest.raises(UserError, match="give one"):
        db.main(["--from_dir", str(tmp_path), "--sets", "Set5", "--benchmark_dir", str(tmp_path / "b")])
    with pytest.raises(UserError, match="go with --from_dir"):
        db.main(["--name", "Mine", "--benchmark_dir", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_from_dir_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        db.main(["--from_dir", str(tmp_path / "nope"), "--benchmark_dir", str(tmp_path / "b")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        db.main(["--from_dir", str(tmp_path / "empty"), "--benchmark_dir", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_the_pinned_sources_are_the_hub_urls_at_fixed_revisions():
    for source in db.SOURCES.values():
        assert source.url().startswith("https://huggingface.co/datasets/eugenesiow/")
        assert len(source.revision) == 40 and "/resolve/" + source.revision + "/" in source.url()
    assert db.SOURCES["Set5"].sha256 and db.SOURCES["B100"].sha256
    assert set(db.DEFAULT_SETS) <= {
        name for name, source in db.SOURCES.items() if source.sha256 or db.CONTENT_SHA256.get(name)
    }
