"""A bounded spool on local disk for writes bound for a Trackio server.

Every write first goes into an append-only JSON-lines file of this process
(one line per MLflow call), and a background thread sends the lines to the
server in order, in batches. A write therefore costs one `write()` call,
survives the process being killed as soon as it returns, and waits on disk
while the server is unreachable. The thread acknowledges what the server
took in a small offset file; a fully sent file is truncated, so the spool
only holds what is waiting.

Each process owns its file through an exclusive lock. A file whose owner has
died (the lock can be taken) is an orphan: the next spool opened for the same
server claims it and sends it before its own lines. Rows carry deterministic
ids and the server inserts them with ``INSERT OR IGNORE``, so sending a line
twice (after a crash between sending and acknowledging) stores nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_EXHAUSTED

_logger = logging.getLogger(__name__)

SPOOL_DIR_ENV = "MLFLOW_TRACKIO_SPOOL_DIR"
SPOOL_MAX_BYTES_ENV = "MLFLOW_TRACKIO_SPOOL_MAX_BYTES"
_DEFAULT_MAX_BYTES = 1 << 30

_SUFFIX = ".jsonl"
_OFFSET_SUFFIX = ".offset"
_REJECTED = "rejected.jsonl"
# One request to the server carries at most this much, which bounds memory.
_BATCH_BYTES = 4 << 20
_BATCH_ROWS = 5000
# This process starts a new file once its file is this large, so a file that
# never fully drains (steady logging) does not grow without bound.
_ROTATE_BYTES = 64 << 20
# Retries back off from the first to the last delay; a new write brings the
# next retry forward, but never closer than the nudge gap to the last one.
_FIRST_RETRY_S = 0.2
_LAST_RETRY_S = 5.0
_NUDGE_GAP_S = 0.5
_WARN_INTERVAL_S = 30.0
_IDLE_S = 2.0
_ORPHAN_SCAN_S = 30.0
_OTHERS_SCAN_S = 2.0


class Unreachable(Exception):
    """The server could not be reached; the lines stay and are sent later."""


class Refused(Exception):
    """The server refused the write token; nothing more is sent."""


class Rejected(Exception):
    """The server answered the lines with an error; they are set aside."""


def spool_root() -> Path:
    """Return the directory that holds one spool directory per server."""
    configured = os.environ.get(SPOOL_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mlflow-trackio" / "spool"


def max_spool_bytes() -> int:
    """Return the configured bound on a server's spool, in bytes."""
    raw = os.environ.get(SPOOL_MAX_BYTES_ENV)
    if not raw:
        return _DEFAULT_MAX_BYTES
    try:
        return max(0, int(float(raw)))
    except ValueError:
        raise MlflowException(
            f"{SPOOL_MAX_BYTES_ENV}={raw!r} is not a number of bytes. Set it to, "
            "for example, 1000000000.",
            INVALID_PARAMETER_VALUE,
        ) from None


def human_size(size: int) -> str:
    """Return a byte count as a short text such as ``'1.5 MB'``."""
    if size < 1000:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("KB", "MB"):
        scaled /= 1000
        if scaled < 1000:
            return f"{scaled:.1f} {unit}"
    return f"{scaled / 1000:.1f} GB"


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class _Segment:
    """One spool file, the offset the server acknowledged, and its lock."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self._offset_fd = os.open(
            path.with_suffix(_OFFSET_SUFFIX), os.O_RDWR | os.O_CREAT, 0o600
        )
        self.end = os.fstat(fd).st_size
        self.acked = min(self._read_offset(), self.end)
        self.rows = 0

    @classmethod
    def create(cls, directory: Path) -> _Segment:
        """Create this process's file, locked before other processes can see it."""
        stem = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        hidden = directory / f"{stem}.tmp"
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _try_lock(fd)
        path = directory / f"{stem}{_SUFFIX}"
        os.replace(hidden, path)
        return cls(path, fd)

    @classmethod
    def claim(cls, path: Path) -> _Segment | None:
        """Take over a file whose owner has died, or return None."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except OSError:
            return None
        try:
            # A file finished and removed by another claimer meanwhile is not
            # the file at `path` any more.
            if not _try_lock(fd) or os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        segment = cls(path, fd)
        segment.rows = segment._count_rows()
        return segment

    def _read_offset(self) -> int:
        raw = os.pread(self._offset_fd, 32, 0)
        try:
            return int(raw.strip() or 0)
        except ValueError:
            return 0

    def _count_rows(self) -> int:
        rows = 0
        with open(self.path, "rb") as handle:
            handle.seek(self.acked)
            for line in handle:
                if line.endswith(b"\n"):
                    rows += _rows_of(line)
        return rows

    def append(self, line: bytes) -> None:
        """Append one complete line, or nothing if the disk refuses part of it."""
        try:
            written = os.write(self.fd, line)
            while written < len(line):
                written += os.write(self.fd, line[written:])
        except OSError:
            os.ftruncate(self.fd, self.end)
            raise
        self.end += len(line)

    def read(self, start: int, end: int) -> tuple[list[dict[str, Any]], int, int]:
        """Return the complete lines from `start` (within limits), where they end,
        and how many rows they hold."""
        import orjson

        size = min(end - start, _BATCH_BYTES)
        data = os.pread(self.fd, size, start) if size else b""
        cut = data.rfind(b"\n") + 1
        if cut == 0 and size < end - start:
            # One line longer than a batch: read just that line.
            data = os.pread(self.fd, end - start, start)
            cut = data.find(b"\n") + 1
        ops: list[dict[str, Any]] = []
        rows = 0
        position = start
        for line in data[:cut].splitlines(keepends=True):
            op = orjson.loads(line)
            ops.append(op)
            rows += int(op.get("n", 0))
            position += len(line)
            if rows >= _BATCH_ROWS:
                break
        return ops, position, rows

    def ack(self, position: int, rows: int) -> None:
        """Record that everything before `position` reached the server."""
        self.acked = position
        self.rows = max(0, self.rows - rows)
        if self.acked >= self.end and self.end:
            os.ftruncate(self.fd, 0)
            self.acked = self.end = 0
        os.ftruncate(self._offset_fd, 0)
        os.lseek(self._offset_fd, 0, os.SEEK_SET)
        os.write(self._offset_fd, b"%d\n" % self.acked)

    def remove(self) -> None:
        """Delete the file (it holds nothing more) and drop the lock."""
        for path in (self.path, self.path.with_suffix(_OFFSET_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.release()

    def release(self) -> None:
        """Close the file, leaving what it holds for a later process."""
        for fd in (self.fd, self._offset_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _rows_of(line: bytes) -> int:
    # Lines start with '{"n":<rows>,' so the count needs no JSON parse.
    try:
        return int(line[5 : line.index(b",")])
    except ValueError:
        return 0


class Spool:
    """The writes waiting for one Trackio server, and the thread that sends them.

    Args:
        directory: This server's spool directory.
        label: The server's address without credentials, for messages.
        deliver: Sends a list of lines to the server, raising `Unreachable`,
            `Refused` or `Rejected` when it cannot.
        idle: Called from the sending thread every few seconds when nothing
            waits (the backend sends summaries it held back).
    """

    def __init__(
        self,
        directory: Path,
        label: str,
        deliver: Callable[[list[dict[str, Any]]], None],
        idle: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.label = label
        self._deliver = deliver
        self._idle = idle
        self._max_bytes = max_spool_bytes()
        self._cond = threading.Condition(threading.Lock())
        self._own: _Segment | None = None
        self._backlog: deque[_Segment] = deque()
        self._others_bytes = 0
        self._others_checked = 0.0
        self._orphans_checked = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.refused: str | None = None
        self._retry_at = 0.0
        self._delay = 0.0
        self._last_attempt = 0.0
        self._offline_warned_at: float | None = None
        self._failures = 0

    # Writing -------------------------------------------------------------

    def append(self, op: dict[str, Any]) -> None:
        """Add one line (its row count under ``"n"``, first) for the server.

        Raises:
            MlflowException: If the spool is full.
        """
        import orjson

        line = orjson.dumps(op) + b"\n"
        with self._cond:
            if self._own is not None and self._own.end > _ROTATE_BYTES:
                self._backlog.append(self._own)
                self._own = None
            if self._own is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._own = _Segment.create(self.directory)
            self._check_room(self._own, len(line))
            self._own.append(line)
            self._own.rows += int(op.get("n", 0))
            self._nudge_locked()
            self._ensure_thread_locked()

    def _check_room(self, own: _Segment, size: int) -> None:
        now = time.monotonic()
        if now - self._others_checked > _OTHERS_SCAN_S:
            self._others_bytes = self._bytes_of_others()
            self._others_checked = now
        used = own.end + self._others_bytes
        if used + size > self._max_bytes:
            raise MlflowException(
                f"The spool for the Trackio server at {self.label} is full "
                f"({human_size(used)} in {self.directory}). Bring the server back, "
                f"or raise {SPOOL_MAX_BYTES_ENV}.",
                RESOURCE_EXHAUSTED,
            )

    def _bytes_of_others(self) -> int:
        own = self._own.path if self._own else None
        total = 0
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path != own:
                with contextlib.suppress(OSError):
                    total += path.stat().st_size
        return total

    # Orphans -------------------------------------------------------------

    def claim_orphans(self) -> None:
        """Take over the files of processes that died with lines unsent."""
        with self._cond:
            self._claim_orphans_locked()
            if self._backlog:
                self._ensure_thread_locked()

    def _claim_orphans_locked(self) -> None:
        self._orphans_checked = time.monotonic()
        if not self.directory.is_dir():
            return
        held = {s.path for s in self._backlog}
        if self._own is not None:
            held.add(self._own.path)
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            if path in held or path.name == _REJECTED:
                continue
            segment = _Segment.claim(path)
            if segment is None:
                continue
            if segment.acked >= segment.end:
                segment.remove()
                continue
            _logger.info(
                "Sending %d rows that an earlier process left in %s.",
                segment.rows,
                path,
            )
            self._backlog.append(segment)

    # State ---------------------------------------------------------------

    def pending(self) -> tuple[int, int]:
        """Return the rows and bytes waiting to be sent."""
        with self._cond:
            return self._pending_locked()

    def _pending_locked(self) -> tuple[int, int]:
        segments = [*self._backlog, *([self._own] if self._own else [])]
        return (
            sum(s.rows for s in segments),
            sum(s.end - s.acked for s in segments),
        )

    def _has_work_locked(self) -> bool:
        return bool(self._backlog) or (
            self._own is not None and self._own.acked < self._own.end
        )

    def describe_pending(self) -> str:
        """Return a sentence fragment saying how much waits and where."""
        rows, size = self.pending()
        return f"{rows} rows ({human_size(size)}) wait in the spool at {self.directory}"

    def wait_drained(self, timeout: float, *, give_up_offline: bool = False) -> bool:
        """
        Wait up to `timeout` seconds until everything is sent; return whether.

        Args:
            timeout: The longest wait, in seconds.
            give_up_offline: Stop waiting at the first failed attempt to reach
                the server after the call (for reads, which need it anyway).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            failures = self._failures
            self._nudge_locked()
            while self._has_work_locked() and self.refused is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (give_up_offline and self._failures > failures):
                    return False
                self._cond.wait(remaining)
            return not self._has_work_locked()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (within `timeout`) and release the files.

        Lines still waiting stay on disk for a later process.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return
        with self._cond:
            for segment in self._backlog:
                segment.release()
            self._backlog.clear()
            if self._own is not None:
                if self._own.acked >= self._own.end:
                    self._own.remove()
                else:
                    self._own.release()
                self._own = None
            self._thread = None
            self._stopping = False

    # Sending -------------------------------------------------------------

    def _nudge_locked(self) -> None:
        earliest = self._last_attempt + _NUDGE_GAP_S
        self._retry_at = min(self._retry_at, max(time.monotonic(), earliest))
        self._cond.notify_all()

    def _ensure_thread_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="mlflow-trackio-spool", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            if job == "idle":
                self._run_idle_hook()
                continue
            self._send(*job)

    def _next_job(self) -> Any:
        with self._cond:
            while True:
                now = time.monotonic()
                ready = self._has_work_locked() and self.refused is None
                if self._stopping and not (ready and now >= self._retry_at):
                    return None
                if ready and now >= self._retry_at:
                    if now - self._orphans_checked > _ORPHAN_SCAN_S:
                        self._claim_orphans_locked()
                    segment = self._backlog[0] if self._backlog else self._own
                    return segment, segment.acked, segment.end
                timeout = self._retry_at - now if ready else _IDLE_S
                if not self._cond.wait(timeout) and not ready:
                    return "idle"

    def _run_idle_hook(self) -> None:
        if self._idle is None:
            return
        try:
            self._idle()
        except Exception:  # the hook only appends; a fault must not stop sending
            _logger.debug("The spool's idle hook failed.", exc_info=True)

    def _send(self, segment: _Segment, start: int, end: int) -> None:
        ops, position, rows = segment.read(start, end)
        self._last_attempt = time.monotonic()
        try:
            if ops:
                self._deliver_isolating(ops)
        except Unreachable as exc:
            self._went_offline(str(exc))
            return
        except Refused as exc:
            with self._cond:
                self.refused = str(exc)
                self._cond.notify_all()
            _logger.error(
                "The Trackio server at %s refused the writes (%s), so nothing more is "
                "sent; %s.",
                self.label,
                exc,
                self.describe_pending(),
            )
            return
        except Exception as exc:  # a fault here must not end the sending thread
            _logger.error("Sending to %s failed.", self.label, exc_info=True)
            self._went_offline(type(exc).__name__)
            return
        with self._cond:
            if not ops and segment is not self._own:
                # An orphan ends in a line its writer was killed while writing.
                position = segment.end
            segment.ack(position, rows)
            if segment is not self._own and segment.acked >= segment.end:
                self._backlog.popleft()
                segment.remove()
            self._back_online_locked()
            self._cond.notify_all()

    def _deliver_isolating(self, ops: list[dict[str, Any]]) -> None:
        try:
            self._deliver(ops)
            return
        except Rejected as exc:
            if len(ops) == 1:
                self._set_aside(ops, str(exc))
                return
        for op in ops:
            try:
                self._deliver([op])
            except Rejected as exc:
                self._set_aside([op], str(exc))

    def _set_aside(self, ops: list[dict[str, Any]], reason: str) -> None:
        import orjson

        path = self.directory / _REJECTED
        with open(path, "ab") as handle:
            for op in ops:
                handle.write(orjson.dumps(op) + b"\n")
        _logger.error(
            "The Trackio server at %s rejected %d rows (%s); they are kept in %s.",
            self.label,
            sum(int(op.get("n", 0)) for op in ops),
            reason[:120],
            path,
        )

    def _went_offline(self, reason: str) -> None:
        with self._cond:
            self._failures += 1
            self._cond.notify_all()
            self._delay = min(max(self._delay * 2, _FIRST_RETRY_S), _LAST_RETRY_S)
            self._retry_at = time.monotonic() + self._delay
            now = time.monotonic()
            warned = self._offline_warned_at
            due = warned is None or now - warned >= _WARN_INTERVAL_S
            if due:
                self._offline_warned_at = now
            rows, size = self._pending_locked()
        if due:
            _logger.warning(
                "The Trackio server at %s is unreachable (%s); %d rows (%s) wait in "
                "the spool at %s and are sent when it is back.",
                self.label,
                reason,
                rows,
                human_size(size),
                self.directory,
            )

    def _back_online_locked(self) -> None:
        if self._delay:
            _logger.info("The Trackio server at %s is reachable again.", self.label)
        self._delay = 0.0
        self._retry_at = 0.0
        self._offline_warned_at = None
