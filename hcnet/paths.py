"""Every path the project reads or writes: a local folder or a Cloud Storage bucket
(`gs://bucket/...`).

Paths are etils.epath paths, so the rest of the code opens, lists and joins them without knowing
where they are. gs:// goes through gcsfs (fsspec); Orbax's arrays go through TensorStore and
ArrayRecord shards through their own GCS readers, each with the machine's Google credentials.
What Cloud Storage cannot do is handled here:

- objects cannot be appended to: `LogFile` holds a growing file's bytes and rewrites the object;
- the ArrayRecord writer and the profiler write local files only: `staged` gives a local folder and
  uploads it whole (`copy_tree`), with the file that marks the folder complete last;
- a missing bucket, missing credentials or permissions surface deep in a client library:
  `check` says which, in one line, before anything is built;
- the clients retry a busy service in their own ways, and gcsfs not a resumable upload whose
  answer was lost: the run's own writes (`LogFile`, the run files) go through `retried`, which
  tries a whole write again for `RETRY_S` seconds, says so at most once a minute, and then ends
  the run in one line (docs/reliability.md).
"""

import contextlib
import functools
import os
import shutil
import tempfile
import time
import uuid

import fsspec.config
from absl import logging
from etils import epath

from hcnet.errors import FaultError, UserError, described

Path = epath.Path
PACKAGE = epath.Path(__file__).resolve().parent  # hcnet/ (its data files)
REPO = PACKAGE.parent  # the checkout (git commit of a run)
REMOTE = ("gs://",)
RETRY_S = 300.0  # how long `retried` tries a write again: a few minutes of a service's trouble


@functools.cache
def configure_gcs() -> None:
    """The Cloud Storage settings every gs:// path needs, made once per process (before the first
    one):

    - gs:// through gcsfs, never TensorFlow's gfile: TensorFlow stays out of the training processes,
      and every client of this module is the one fsspec stack (EPATH_USE_TF=true in the environment
      wins);
    - gcsfs caches folder listings forever by default; the hosts of a pod and a resumed run write
      the same folders, so a listing must be what the bucket holds now (FSSPEC_GS_USE_LISTINGS_CACHE
      wins);
    - a resumable upload whose last answer was lost (a reset connection) is retried by gcsfs
      against a session the service has closed, which fails (404) although the object is written:
      `_finish_lost_uploads` accepts the object when it is there whole.
    """
    os.environ.setdefault("EPATH_USE_TF", "false")
    fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
    _finish_lost_uploads()


def _finish_lost_uploads() -> None:
    """gcsfs's last chunk of an upload (every write through gcsfs is a resumable upload, Orbax's
    metadata and commit files included): when its retry finds the session gone (FileNotFoundError),
    the upload is done if the object now holds exactly these bytes (its size and MD5)."""
    from gcsfs import core

    upload = core.GCSFile._upload_chunk
    if getattr(upload, "hcnet", False):
        return

    def _upload_chunk(self, final=False):
        data = bytes(self.buffer.getbuffer()) if final and self.offset == 0 else None
        try:
            return upload(self, final)
        except FileNotFoundError:
            if data is None or not (self.autocommit and _holds(self.fs, self.path, data)):
                raise
            self.buffer, self.offset = core.UnclosableBytesIO(), len(data)
            return True

    _upload_chunk.hcnet = True
    core.GCSFile._upload_chunk = _upload_chunk


def _holds(fs, path: str, data: bytes) -> bool:
    """Whether object `path` is exactly `data` (its size and MD5, as the service reports them)."""
    import base64
    import hashlib

    try:
        info = fs.info(path)
    except FileNotFoundError:
        return False
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    return int(info.get("size", -1)) == len(data) and info.get("md5Hash") == md5


def is_remote(p) -> bool:
    return os.fspath(p).startswith(REMOTE)


def path(p) -> epath.Path:
    """`p` as a path: gs:// kept as given, a local one made absolute (~ expanded)."""
    s = os.fspath(p)
    if not is_remote(s):
        return epath.Path(os.path.abspath(os.path.expanduser(s)))
    configure_gcs()
    return p if isinstance(p, epath.Path) else epath.Path(s)


def local(p, flag: str, why: str) -> epath.Path:
    """`p` if it is a local path; one line naming the flag and what to do instead if it is gs://."""
    if is_remote(p):
        raise UserError(f"{flag}={p}: {why}")
    return path(p)


def bucket_of(p) -> str:
    return os.fspath(p)[len("gs://") :].split("/", 1)[0]


def check(p, *, write: bool = False) -> None:
    """For gs:// paths: the bucket exists and these credentials may list it (and, with `write`,
    write and delete objects there); for a local folder to write in: it is a folder, made if need
    be, that this user may write in. One line naming what is wrong otherwise."""
    if is_remote(p):
        _check_bucket(bucket_of(p), os.fspath(p), write)
    elif write:
        _check_folder(path(p))


def _check_folder(p: epath.Path) -> None:
    if p.exists() and not p.is_dir():
        raise UserError(
            f"{p}: a file, not a folder; give a folder (a new one, or a run's to resume)"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"{p}: cannot make this folder ({e.strerror}); give one you may write in"
        ) from None
    if not os.access(p, os.W_OK):
        raise UserError(f"{p}: this user may not write in this folder; give one you may write in")


@functools.cache
def _check_bucket(bucket: str, where: str, write: bool) -> None:
    import google.auth.exceptions
    from google.api_core import exceptions
    from google.cloud import storage

    if not bucket:
        raise UserError(f"{where}: no bucket named; paths look like gs://BUCKET/folder")
    try:
        client = storage.Client()
        blobs = client.bucket(bucket)
        list(blobs.list_blobs(max_results=1))
        if write:
            probe = blobs.blob(
                f"{where[len('gs://') + len(bucket) + 1 :].rstrip('/')}/.hcnet-write-check-"
                f"{uuid.uuid4().hex}".lstrip("/")
            )
            probe.upload_from_string(b"")
            probe.delete()
    except google.auth.exceptions.DefaultCredentialsError:
        raise UserError(
            f"{where}: no Google Cloud credentials on this machine; on a workstation run "
            "`gcloud auth application-default login`, on a Cloud TPU or GCE VM give the VM a "
            "service account with access to the bucket"
        ) from None
    except exceptions.NotFound:
        raise UserError(
            f"{where}: bucket gs://{bucket} does not exist; create it with `gcloud storage "
            f"buckets create gs://{bucket} --location=REGION` (the TPU's region) or fix the name"
        ) from None
    except (exceptions.Forbidden, exceptions.Unauthorized) as e:
        need = "list, write and delete objects" if write else "list and read objects"
        raise UserError(
            f"{where}: these credentials may not {need} in gs://{bucket} "
            f"({e.code} {_first_line(e.message)}); grant them roles/storage.objectAdmin on the "
            "bucket (roles/storage.objectViewer to read only)"
        ) from None


def _first_line(text) -> str:
    return str(text).strip().splitlines()[0][:160] if str(text).strip() else ""


_said = {"at": -float("inf"), "since": 0}  # retries, and when the last line about them was said


def retried(where, write, *, budget_s: float | None = None):
    """`write()` of something at `where`; for gs:// tried again with backoff (1 s doubling to 30 s)
    for up to `budget_s` (RETRY_S) seconds while it fails, so the write must be whole each time (it
    rewrites an object). A line at most once a minute says how many writes were retried; when the
    time is spent, FaultError names `where` and the last error."""
    if not is_remote(where):
        return write()
    what, budget = os.fspath(where), RETRY_S if budget_s is None else budget_s
    deadline, delay = time.monotonic() + budget, 1.0
    while True:
        try:
            return write()
        except Exception as e:  # a write to a bucket: whatever its client raised
            error = described(e)
            if time.monotonic() + delay > deadline:
                raise FaultError(
                    f"{what}: Cloud Storage failed for {budget:.0f} s ({error}); the last complete "
                    "checkpoint stands: run the same command again once the bucket answers"
                ) from None
            _said["since"] += 1
            if time.monotonic() - _said["at"] >= 60:
                logging.warning(
                    "Cloud Storage: %d write(s) retried in the last minute (%s: %s); retrying "
                    "for up to %.0f s",
                    _said["since"],
                    what,
                    error,
                    budget,
                )
                _said.update(at=time.monotonic(), since=0)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


def new_dir(p) -> epath.Path:
    """`p` made ready as a new output folder (local or gs://); FileExistsError if it holds
    anything."""
    p = path(p)
    check(p, write=True)
    if p.exists() and any(p.iterdir()):
        raise FileExistsError(f"{p} exists and is not empty; choose a new --out directory")
    p.mkdir(parents=True, exist_ok=True)
    return p


def walk(p):
    """(folder, subfolder names, file names) for every folder under `p`, as os.walk; the folders are
    paths of the same kind as `p` (epath's own walk drops the gs:// of the folders it yields)."""
    p = path(p)
    base = os.fspath(p).removeprefix("gs://")
    for root, dirs, files in p.walk():
        yield p / os.path.relpath(os.fspath(root).removeprefix("gs://"), base), dirs, files


def copy_file(src, dst) -> None:
    """Streams one file between any two places (local, gs://)."""
    with path(src).open("rb") as a, path(dst).open("wb") as b:
        shutil.copyfileobj(a, b, 2**24)


def copy_tree(src, dst, *, last: str | None = None) -> list[str]:
    """Copies the files under `src` to the same places under `dst` (local or gs://); a file named
    `last` (e.g. the one that marks a dataset complete) is copied after all the others. Returns the
    relative names copied."""
    src, dst = path(src), path(dst)
    names = sorted(
        os.path.relpath(os.fspath(root / f), os.fspath(src))
        for root, _, files in walk(src)
        for f in files
    )
    names.sort(key=lambda n: os.path.basename(n) == last)  # stable: `last` files go to the end
    for name in names:
        target = dst / name
        if not is_remote(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        copy_file(src / name, target)
    return names


@contextlib.contextmanager
def staged(p, *, last: str | None = None):
    """A local folder standing for `p`: `p` itself when local; for gs://, a temporary folder whose
    files are uploaded to `p` when the block ends without an error (then removed)."""
    if not is_remote(p):
        path(p).mkdir(parents=True, exist_ok=True)
        yield path(p)
        return
    tmp = tempfile.mkdtemp(prefix="hcnet-staged-")
    try:
        yield epath.Path(tmp)
        copy_tree(tmp, p, last=last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class LogFile:
    """A file that only grows while a run writes it (metrics, TensorBoard events), starting from
    `start`.

    Locally it is appended to. A Cloud Storage object cannot be appended to (an append is an
    overwrite there), so on gs:// the bytes are kept here and each flush rewrites the whole object:
    what was flushed is always there, whole.
    """

    def __init__(self, p, start: bytes = b""):
        self.path = path(p)
        self._remote = is_remote(self.path)
        if self._remote:
            self._data, self._dirty = bytearray(start), True
            self.flush()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if (
            self.path.read_bytes() if self.path.exists() else b""
        ) != start:  # a rewrite, replaced in one rename
            tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}"
            tmp.write_bytes(start)
            tmp.replace(self.path)
        self._file = open(self.path, "ab")

    def write(self, data: bytes) -> None:
        if self._remote:
            self._data += data
            self._dirty = True
        else:
            self._file.write(data)

    def flush(self) -> None:
        if not self._remote:
            self._file.flush()
        elif self._dirty:
            data = bytes(self._data)
            retried(self.path, lambda: self.path.write_bytes(data))
            self._dirty = False

    def close(self) -> None:
        self.flush()
        if not self._remote:
            self._file.close()
