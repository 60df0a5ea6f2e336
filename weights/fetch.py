"""Fetch the official YOLOv7 release checkpoints into ``weights/``, size- and sha256-checked.

    python -m weights.fetch NAME [NAME ...|all] [--dest weights/] [--url-base URL] [--from-file PATH]
                            [--trust-on-first-use] [--manifest PATH] [--timeout SECONDS]

Each file is streamed to a temporary file beside its destination, checked against ``manifest.json``
(size, then sha256), and only then renamed into place, so a failed or corrupted download never leaves a
file that looks complete. A file that is already there and verifies is not downloaded again.

Mirrors: ``--url-base`` or the ``YOLO_WEIGHTS_URL_BASE`` environment variable replace the release URL
(``<base>/<file>``; ``file://`` bases work too). Without internet, download the file elsewhere and give it
with ``--from-file PATH`` (copied and verified), or put it at ``weights/<name>.pt`` yourself.

Exit status: 0 when every requested file is in place and verified, 1 otherwise, 2 for usage errors.
This tool is for build and development time only; the predictor never downloads anything.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
MANIFEST_PATH = HERE / "manifest.json"
URL_BASE_ENV = "YOLO_WEIGHTS_URL_BASE"
CHUNK = 1 << 20
USER_AGENT = "yolo-v7-weights-fetch/1.0"


class FetchError(Exception):
    """A file could not be put in place; the message says why and what to do."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    variant: str
    file: str
    size: int | None
    sha256: str | None
    input_size: int | None = None
    coco_ap: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsEntry:
        sha = data.get("sha256")
        return cls(
            name=str(data["name"]),
            variant=str(data.get("variant", data["name"])),
            file=str(data.get("file", f"{data['name']}.pt")),
            size=None if data.get("size") is None else int(data["size"]),
            sha256=None if sha is None else str(sha).lower(),
            input_size=data.get("input_size"),
            coco_ap=data.get("coco_ap"),
        )


@dataclass(frozen=True)
class Manifest:
    url_base: str
    entries: dict[str, WeightsEntry]

    def entry(self, name: str) -> WeightsEntry:
        key = name[:-3] if name.endswith(".pt") else name
        if key not in self.entries:
            known = ", ".join(self.entries)
            raise FetchError(f"unknown weights {name!r}; known: {known} (or 'all')")
        return self.entries[key]


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Read ``manifest.json`` (or ``path``)."""
    with open(path or MANIFEST_PATH, encoding="utf-8") as handle:
        data = json.load(handle)
    entries = [WeightsEntry.from_dict(item) for item in data["weights"]]
    return Manifest(url_base=str(data["url_base"]).rstrip("/"), entries={e.name: e for e in entries})


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check(path: Path, entry: WeightsEntry) -> str:
    """Verify ``path`` against ``entry`` (size first, it is cheap); returns the sha256 seen.

    Raises FetchError on a mismatch. With no published sha256 the file is not judged: the caller decides.
    """
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise FetchError(f"{entry.file}: size {size:,} bytes, expected {entry.size:,} (incomplete or wrong file)")
    seen = sha256_file(path)
    if entry.sha256 is not None and seen != entry.sha256:
        raise FetchError(f"{entry.file}: sha256 {seen}, expected {entry.sha256} (corrupted or wrong file)")
    return seen


# ----- progress ---------------------------------------------------------------------------------------
def _progress(total: int | None, desc: str, stream: IO[str]) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the [cli] extra; fall back to a plain line now and then
        return _PlainProgress(total, desc, stream)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=stream,
                dynamic_ncols=True, mininterval=0.5)


class _PlainProgress:
    def __init__(self, total: int | None, desc: str, stream: IO[str]) -> None:
        self.total, self.desc, self.stream = total, desc, stream
        self.done, self.start, self.last = 0, time.monotonic(), 0.0

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= 2.0:
            self.last = now
            rate = self.done / max(now - self.start, 1e-6)
            of = f"/{self.total:,}" if self.total else ""
            print(f"{self.desc}: {self.done:,}{of} bytes, {rate / 1e6:.1f} MB/s", file=self.stream)

    def close(self) -> None:
        pass


# ----- the work ---------------------------------------------------------------------------------------
def _url_for(entry: WeightsEntry, url_base: str) -> str:
    return f"{url_base.rstrip('/')}/{entry.file}"


def _by_hand_hint(entry: WeightsEntry, url: str, dest: Path) -> str:
    return (
        f"  To provide the file by hand: download {url} on a machine that can reach it, then either\n"
        f"    python -m weights.fetch {entry.name} --from-file /path/to/{entry.file}\n"
        f"  or copy it to {dest / entry.file} (it is checked against weights/manifest.json when fetched).\n"
        f"  A mirror can be used with --url-base URL or {URL_BASE_ENV}=URL."
    )


FILE_MODE = 0o644  # world-readable: images and volumes run the predictor under other (arbitrary) UIDs


def _install(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, FILE_MODE)  # mkstemp made it 0600
    os.replace(tmp, final)


def _temp_beside(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    return Path(name)


def _accept(tmp: Path, entry: WeightsEntry, final: Path, trust: bool, out: IO[str], source: str) -> None:
    """Verify ``tmp`` and rename it to ``final``; on any refusal ``tmp`` is left for the caller to delete."""
    seen = check(tmp, entry)
    if entry.sha256 is None:
        size = tmp.stat().st_size
        if not trust:
            raise FetchError(
                f"{entry.file}: no published sha256 is known for this file, so it cannot be verified "
                f"(it has sha256 {seen}, {size:,} bytes).\n"
                f"  Re-run with --trust-on-first-use to install it anyway, and record the hash in "
                f"weights/manifest.json."
            )
        print(
            f"warning: {entry.file} installed on trust (no published sha256): sha256 {seen}, {size:,} bytes; "
            f"record these in weights/manifest.json to pin them.",
            file=out,
        )
    _install(tmp, final)
    print(f"{entry.file}: verified{' (unpinned)' if entry.sha256 is None else ''}, from {source} -> {final}",
          file=out)


def download(entry: WeightsEntry, url_base: str, dest: Path, *, trust: bool = False, timeout: float = 30.0,
             out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> Path:
    final = dest / entry.file
    url = _url_for(entry, url_base)
    tmp = _temp_beside(final)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http, https, file)
        except urllib.error.HTTPError as error:
            raise FetchError(
                f"cannot download {entry.file}: {url} answered HTTP {error.code} {error.reason}.\n"
                + _by_hand_hint(entry, url, dest)
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise FetchError(
                f"cannot reach the weights release for {entry.file} at {url} ({reason}).\n"
                "  This machine may have no internet access (or the mirror is down).\n"
                + _by_hand_hint(entry, url, dest)
            ) from None
        with response:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            total = announced or entry.size
            received = 0
            print(f"downloading {url}", file=out)
            bar = _progress(total, entry.file, err)
            try:
                with open(tmp, "wb") as handle:
                    while True:
                        try:
                            block = response.read(CHUNK)
                        except (OSError, http.client.HTTPException) as error:
                            raise FetchError(
                                f"the download of {entry.file} from {url} broke off ({error}).\n"
                                + _by_hand_hint(entry, url, dest)
                            ) from None
                        if not block:
                            break
                        handle.write(block)
                        received += len(block)
                        bar.update(len(block))
            finally:
                bar.close()
            if announced is not None and received < announced:
                raise FetchError(
                    f"the download of {entry.file} from {url} broke off after {received:,} of "
                    f"{announced:,} bytes.\n" + _by_hand_hint(entry, url, dest)
                )
        _accept(tmp, entry, final, trust, out, url)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def install_from_file(entry: WeightsEntry, source: Path, dest: Path, *, trust: bool = False,
                      out: IO[str] = sys.stdout) -> Path:
    if not source.is_file():
        raise FetchError(f"--from-file {source}: no such file")
    final = dest / entry.file
    if final.exists() and source.resolve() == final.resolve():
        tmp = None
    else:
        tmp = _temp_beside(final)
    try:
        if tmp is None:  # the file is already where it belongs: only verify it
            seen = check(final, entry)
            if entry.sha256 is None and not trust:
                raise FetchError(f"{entry.file}: no published sha256 is known (it has {seen}); "
                                 "re-run with --trust-on-first-use to accept it")
            print(f"{entry.file}: verified in place ({final})", file=out)
            return final
        shutil.copyfile(source, tmp)
        _accept(tmp, entry, final, trust, out, str(source))
        return final
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def ensure(entry: WeightsEntry, *, dest: Path, url_base: str, trust: bool = False, timeout: float = 30.0,
           out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> Path:
    """Make ``dest/<file>`` present and verified, downloading only when needed."""
    final = dest / entry.file
    if final.is_file():
        try:
            seen = check(final, entry)
        except FetchError as error:
            print(f"{final}: present but does not verify ({error}); fetching it again", file=err)
        else:
            if entry.sha256 is None:
                print(f"{final}: already present, unpinned (no published sha256; it has {seen}); kept as is",
                      file=out)
            else:
                print(f"{final}: already present and verified", file=out)
            return final
    return download(entry, url_base, dest, trust=trust, timeout=timeout, out=out, err=err)


# ----- command line -----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m weights.fetch",
        description="Fetch official YOLOv7 release weights into weights/, size- and sha256-checked.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="yolov7-tiny, yolov7, yolov7x, yolov7-w6, "
                        "yolov7-e6, yolov7-d6, yolov7-e6e, or all")
    parser.add_argument("--dest", type=Path, default=HERE, help="destination folder (default: weights/)")
    parser.add_argument("--url-base", default=None,
                        help=f"download from <URL-BASE>/<file> instead of the release (env {URL_BASE_ENV})")
    parser.add_argument("--from-file", type=Path, default=None, metavar="PATH",
                        help="install a file downloaded elsewhere (copied and verified); needs exactly one NAME")
    parser.add_argument("--trust-on-first-use", action="store_true",
                        help="accept a file that has no published sha256, printing the hash it has")
    parser.add_argument("--manifest", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    return parser


def _select(manifest: Manifest, names: Iterable[str]) -> list[WeightsEntry]:
    chosen: list[WeightsEntry] = []
    for name in names:
        for entry in manifest.entries.values() if name == "all" else [manifest.entry(name)]:
            if entry not in chosen:
                chosen.append(entry)
    return chosen


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
        entries = _select(manifest, args.names)
    except FetchError as error:
        parser.error(str(error))
    if args.from_file is not None and len(entries) != 1:
        parser.error("--from-file needs exactly one NAME")
    url_base = args.url_base or os.environ.get(URL_BASE_ENV) or manifest.url_base
    dest: Path = args.dest

    failures = 0
    for entry in entries:
        action: Callable[[], Path]
        if args.from_file is not None:
            def action(entry: WeightsEntry = entry) -> Path:
                return install_from_file(entry, args.from_file, dest, trust=args.trust_on_first_use, out=out)
        else:
            def action(entry: WeightsEntry = entry) -> Path:
                return ensure(entry, dest=dest, url_base=url_base, trust=args.trust_on_first_use,
                              timeout=args.timeout, out=out, err=err)
        try:
            action()
        except FetchError as error:
            failures += 1
            print(f"error: {error}", file=err)
        except KeyboardInterrupt:
            print("interrupted; nothing partial was left behind", file=err)
            return 130
    if failures:
        print(f"{failures} of {len(entries)} weights file(s) not installed", file=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
