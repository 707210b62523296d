"""Resumable, verified downloads and atomic zip extraction (standard library only).

Datasets and checkpoints are hundreds of megabytes fetched over flaky links: a broken download must resume
where it stopped (HTTP Range on a `.part` file), a finished file must be checked (size, SHA-256) before it
takes its final name, and an archive must never leave a half-extracted folder that looks complete.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from utils.errors import FatalError, UserError
from utils.files.atomic_write import DISK_FULL
from utils.files.lock import one_writer

USER_AGENT = "lkdn-downloader/1.0 (+urllib)"
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a request counts as failed
MIN_RATE = 1024.0  # bytes per second, averaged over RATE_WINDOW: slower than this, a transfer is given up
RATE_WINDOW = 60.0  # seconds
DEADLINE = 24 * 3600.0  # seconds one transfer may take at most, however steadily it crawls
MAX_MEMBER_BYTES = 256 << 20  # no image of a dataset here comes near it; a larger member is not what we want
MAX_DOWNLOAD_BYTES = 64 << 30  # a transfer that has not said its size stops here at the latest


class NetworkError(UserError):
    """The server could not be reached or the transfer broke off (re-running resumes)."""


@contextlib.contextmanager
def created_folders_removed_on_error(*folders: Path) -> Iterator[None]:
    """On an error in the block, remove those of `folders` that did not exist before it and are empty after it
    (deepest first): a failed download leaves no empty folders behind."""
    new = [Path(folder) for folder in folders if not Path(folder).exists()]
    try:
        yield
    except BaseException:
        for folder in sorted(new, key=lambda f: len(f.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty, or already gone: leave it
                folder.rmdir()
        raise


@contextlib.contextmanager
def download_session(
    folder: Path, flag: str, offline: str, *created: Path, wait: float | None = 0
) -> Iterator[None]:
    """What every downloader holds while it writes into `folder`: the folder's one-writer lock (refused at once,
    or after `wait` seconds, naming the holder and `flag`), the removal of `folder` and `created` if they are
    new and still empty when the block fails, and `offline` (the way to work without the network) added to a
    network error's line."""
    try:
        with (
            created_folders_removed_on_error(folder, *created),
            one_writer(folder, "download", flag, wait=wait),
        ):
            yield
    except NetworkError as err:
        raise UserError(f"{err}; offline: {offline}") from None


def png_bound(width: int, height: int, channels: int = 3) -> int:
    """The most bytes a PNG of an 8-bit image this large can take: its raw pixels, a filter byte per row,
    deflate's stored-block overhead (5 bytes per 64 KiB) and the chunks around them, with 1% margin. A data set
    whose images are at most this large holds no larger file; a member that claims more is not one of them."""
    raw = height * (width * channels + 1)
    return int(1.01 * (raw + 5 * (raw // 65535 + 1))) + 64 * 1024


def decode_all(paths: Iterable[Path], fix: str) -> None:
    """Decode every image of `paths` (a zero-filled or truncated file would pass a size check); UserError naming
    the first that does not decode."""
    import cv2

    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise UserError(f"{path}: not a decodable image (truncated, zero-filled or not an image); {fix}")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _part_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def _open(
    url: str, offset: int, timeout: float, extra: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, **(extra or {})}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header such as `bytes 100-199/200` or `bytes */200`."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if match is None:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    chunk: int = 1 << 20,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    headers: dict[str, str] | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if a previous run broke off; verify, then rename.
    `headers` go with every request (e.g. the authorization a gated dataset asks for). No more than
    `max_bytes` are ever written, whatever the server announces (or does not).

    The size is checked against `size` (when given) and the server's Content-Length, the SHA-256 against
    `sha256` (when given). Raises UserError on network errors (re-running resumes) and on a mismatch (the
    partial file is deleted, as its bytes are wrong).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0

    if size is None or offset < size:
        _fetch(
            url, part, offset, size=size, chunk=chunk, progress=progress, timeout=timeout, name=dest.name,
            headers=headers, max_bytes=max_bytes,
        )  # fmt: skip

    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise UserError(f"{url}: downloaded {got} bytes, expected {size}; re-run to download it again")
    if sha256 is not None:
        actual = sha256_of(part)
        if actual.lower() != sha256.lower():
            part.unlink()
            raise UserError(
                f"{url}: SHA-256 mismatch (expected {sha256.lower()}, got {actual}); the partial file was "
                "deleted: re-run to download it again, and if it persists the file on the server has changed"
            )
    os.replace(part, dest)
    return dest


def _fetch(
    url: str,
    part: Path,
    offset: int,
    *,
    size: int | None,
    chunk: int,
    progress: bool,
    timeout: float,
    name: str,
    headers: dict[str, str] | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> None:
    """Stream the rest of `url` into `part` from `offset`; on return `part` holds the whole file."""
    total: int | None = None
    try:
        try:
            resp = _open(url, offset, timeout, headers)
        except urllib.error.HTTPError as err:
            if err.code != 416 or not offset:
                raise
            if _content_range(err.headers.get("Content-Range"))[1] == offset:
                return  # the partial file is already the whole file (a run stopped just before renaming it)
            part.unlink()  # not a prefix of this file: start over
            offset = 0
            resp = _open(url, 0, timeout, headers)
        if resp.status == 206 and _content_range(resp.headers.get("Content-Range"))[0] != offset:
            resp.close()  # a range we did not ask for: start over rather than splice wrong bytes
            offset = 0
            resp = _open(url, 0, timeout, headers)
        with resp:
            length = resp.headers.get("Content-Length")
            length = int(length) if length is not None and length.strip().isdigit() else None
            if resp.status == 206:
                start = offset
                total = _content_range(resp.headers.get("Content-Range"))[1]
                if total is None and length is not None:
                    total = offset + length
            else:
                start, total = 0, length  # 200: no Range sent, or the server ignored it and sends everything
            if size is not None and total is not None and total != size:
                raise UserError(f"{url}: the server reports {total} bytes, expected {size}; check the URL")
            if total is not None and total > max_bytes:
                raise UserError(
                    f"{url}: the server reports {total} bytes, more than this file can be ({max_bytes}); "
                    "check the URL (or the base URL)"
                )
            bar = tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                disable=not progress,
                leave=False,
            )
            pace = _Pace(url, part)
            with open(part, "ab" if start else "wb") as f, bar:
                read = getattr(
                    resp, "read1", resp.read
                )  # read1: what has arrived, so a timeout loses nothing
                written = start
                while block := read(chunk):
                    written += len(block)
                    if written > max_bytes:
                        f.close()
                        part.unlink()
                        raise UserError(
                            f"{url}: sent more than {max_bytes} bytes, more than this file can be; stopped and "
                            "deleted what arrived: check the URL (or the base URL)"
                        )
                    f.write(block)
                    bar.update(len(block))
                    pace.check(len(block))
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise UserError(
                f"{url}: HTTP {err.code} {err.reason}; the file needs an account that accepted its terms "
                "(pass --token or set HF_TOKEN for Hugging Face)"
            ) from None
        raise UserError(f"{url}: HTTP {err.code} {err.reason}; check the URL (or the base URL)") from None
    except (OSError, http.client.HTTPException) as err:
        have = part.stat().st_size if part.exists() else 0
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise FatalError(
                f"{part}: cannot write it ({err.strerror}) after {have} bytes; free disk space and re-run the same "
                "command to resume"
            ) from None
        if not have:
            raise NetworkError(
                f"{url}: cannot download ({err}); check the network connection and re-run"
            ) from None
        raise NetworkError(
            f"{url}: download failed after {have} bytes ({err}); re-run the same command to resume"
        ) from None
    got = part.stat().st_size
    if total is not None and got < total:
        raise UserError(
            f"{url}: connection closed after {got} of {total} bytes; re-run the same command to resume"
        )
    if total is not None and got > total:
        part.unlink()
        raise UserError(f"{url}: received {got} bytes, more than the {total} announced; re-run to start over")


class _Pace:
    """Gives up a transfer slower than MIN_RATE over RATE_WINDOW, or longer than DEADLINE (a server that sends
    a byte now and then never trips the per-read timeout). What arrived is kept: re-running resumes."""

    def __init__(self, url: str, part: Path) -> None:
        self.url, self.part = url, part
        self.started = self.window_start = time.monotonic()
        self.window_bytes = 0

    def check(self, received: int) -> None:
        now = time.monotonic()
        self.window_bytes += received
        if now - self.started > DEADLINE:
            raise UserError(
                f"{self.url}: still downloading after {DEADLINE / 3600:g} h; re-run the same command to resume"
            )
        if now - self.window_start >= RATE_WINDOW:
            rate = self.window_bytes / (now - self.window_start)
            if rate < MIN_RATE:
                raise UserError(
                    f"{self.url}: {rate:.0f} bytes/s over the last {RATE_WINDOW:g} s, below {MIN_RATE:.0f}; "
                    f"{self.part.stat().st_size} bytes kept: re-run the same command to resume"
                )
            self.window_start, self.window_bytes = now, 0


def tar_files(
    archive: Path,
    want: Callable[[str], bool],
    *,
    max_member_bytes: int,
    max_total_bytes: int,
    dataset: str,
    image: str,
    fix: str,
) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) of the regular files of a tar.gz archive for which want(path) is true, in archive
    order. No member may have an unsafe path; each wanted one must declare at most `max_member_bytes`, all of them at
    most `max_total_bytes` (the most `dataset`'s images can take; `image`: "an LSDIR image", for the messages), and
    must hold what it declares; the archive is read to its end, so that gzip checks its CRC and length. UserError
    naming the archive and `fix` otherwise."""
    budget = max_total_bytes
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                if (
                    name.startswith(("/", "\\")) or ".." in Path(name).parts
                ):  # any member: not what was published
                    raise UserError(f"{archive}: unsafe member path {name!r}; {fix}")
                if not member.isfile() or not want(name):
                    continue  # folders, links and files the caller does not want: never read
                if member.size > max_member_bytes:
                    raise UserError(f"{archive}: {name} declares {member.size} bytes, not {image}; {fix}")
                budget -= member.size
                if budget < 0:
                    raise UserError(
                        f"{archive}: its images declare more bytes than {dataset}'s can take; {fix}"
                    )
                stream = tar.extractfile(member)
                data = stream.read() if stream is not None else b""
                if len(data) != member.size:
                    raise UserError(f"{archive}: {name} is shorter than it declares; {fix}")
                yield name, data
            while tar.fileobj.read(1 << 20):  # to the end of the stream: gzip checks its CRC and length there
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise UserError(f"{archive}: not a readable tar.gz archive ({err}); {fix}") from None


def extract_zip(
    zip_path: Path,
    dest_dir: Path,
    *,
    expected_members: Iterable[str] | None = None,
    subdir: str | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int | None = None,
    verify: Callable[[Path], object] | None = None,
) -> Path:
    """Verify `zip_path` (CRCs, expected members, each member's and the total declared size); extract it so
    `dest_dir` appears complete or not at all.

    Extraction goes to a temporary sibling of `dest_dir`; `verify(folder)` checks what was extracted (e.g. that
    every image decodes) before it is renamed into place; with `subdir`, only that folder of the archive becomes
    `dest_dir` (e.g. `DIV2K_valid_LR_bicubic/X4`).
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if dest_dir.exists():
        raise UserError(f"{dest_dir}: already exists; delete it to extract {zip_path.name} again")
    fix = "delete it and download it again"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise UserError(f"{zip_path}: corrupt archive (CRC error in {bad}); {fix}")
            names = set(zf.namelist())
            for name in names:
                if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                    raise UserError(f"{zip_path}: unsafe member path {name!r}; {fix} from the official site")
            for info in zf.infolist():
                if info.file_size > max_member_bytes:
                    raise UserError(
                        f"{zip_path}: {info.filename} declares {info.file_size} bytes, more than any file it should "
                        f"hold ({max_member_bytes}); {fix} from the official site"
                    )
            total = sum(info.file_size for info in zf.infolist())
            if max_total_bytes is not None and total > max_total_bytes:
                raise UserError(
                    f"{zip_path}: declares {total} bytes in all, more than the data set can hold "
                    f"({max_total_bytes}); {fix} from the official site"
                )
            missing = sorted(set(expected_members or ()) - names)
            if missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                raise UserError(f"{zip_path}: missing {shown}; {fix}")
            dest_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extracting.", dir=dest_dir.parent))
            try:
                try:  # zipfile checks each member's CRC and its actual size against the declared one
                    zf.extractall(tmp)
                except OSError as err:
                    raise UserError(
                        f"{dest_dir}: cannot extract {zip_path.name} here ({err.strerror or err}); free disk space "
                        "and re-run"
                    ) from None
                src = tmp / subdir if subdir else tmp
                if not src.is_dir():
                    raise UserError(f"{zip_path}: has no folder {subdir}; {fix}")
                if verify is not None:
                    verify(src)
                os.replace(src, dest_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as err:
        raise UserError(f"{zip_path}: not a readable zip archive ({err}); {fix}") from None
    return dest_dir
