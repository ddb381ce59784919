"""A rollback journal for committing into the results file in place (as SQLite's): the cost of a commit is
what it writes, not the size of the file.

HDF5 rewrites a few of its own structures in place when records are added (the superblock, group B-trees
and heaps, object headers); everything new goes at the end. So a commit opens the file through JournalFile,
which saves the original bytes of every region below L (the file's length when the commit began) to
`<file>.journal` and fsyncs the journal BEFORE the first write to that region reaches the file. Writes at
>= L need no undo: rolling back truncates to L.

    <file>.journal     header: MAGIC, L, crc32
                       entries: offset, length, crc32 (of offset, length and bytes), the original bytes

The commit point is the journal's removal (after the file is fsynced). A journal that is still there
belongs to a commit that did not finish: `rollback` puts every entry's bytes back and truncates to L. A torn
last entry (bad length or checksum) was never applied to the file, since the journal is fsynced first, and
is ignored. A reader that cannot (or must not) modify the file reads the pre-commit state through
RollbackView instead. See access.py for who may do which, under which lock.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"hpcrobust-journal-1\n"
_HEADER = struct.Struct("<QI")  # L, crc32(MAGIC + L)
_ENTRY = struct.Struct("<QQI")  # offset, length, crc32(offset, length, bytes)


def journal_path(path: Path) -> Path:
    return Path(str(path) + ".journal")


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        chunk = view[done:]
        done += os.write(fd, chunk) if offset is None else os.pwrite(fd, chunk, offset + done)


def _read_at(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`; zeros past the end of the file."""
    parts, got = [], 0
    while got < length:
        b = os.pread(fd, length - got, offset + got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts) + bytes(length - got)


def _header(length: int) -> bytes:
    return MAGIC + _HEADER.pack(length, zlib.crc32(MAGIC + struct.pack("<Q", length)))


def _entry(offset: int, data: bytes) -> bytes:
    head = struct.pack("<QQ", offset, len(data))
    return _ENTRY.pack(offset, len(data), zlib.crc32(head + data)) + data


@dataclass
class Journal:
    """A journal as read back: the file's length before the commit and the saved regions, in the order saved."""

    length: int
    entries: list[tuple[int, bytes]]


def read_journal(path: Path) -> Journal | None:
    """The valid part of a journal; None when its header is torn (then nothing was written to the file yet)."""
    raw = path.read_bytes()
    n = len(MAGIC) + _HEADER.size
    if len(raw) < n or not raw.startswith(MAGIC):
        return None
    length, crc = _HEADER.unpack_from(raw, len(MAGIC))
    if crc != zlib.crc32(raw[:len(MAGIC) + 8]):
        return None
    entries, pos = [], n
    while pos + _ENTRY.size <= len(raw):
        off, size, crc = _ENTRY.unpack_from(raw, pos)
        data = raw[pos + _ENTRY.size:pos + _ENTRY.size + size]
        if len(data) != size or crc != zlib.crc32(struct.pack("<QQ", off, size) + data):
            break  # torn: its write never reached the file
        entries.append((off, data))
        pos += _ENTRY.size + size
    return Journal(length, entries)


def rollback(path: Path) -> bool:
    """Undo the commit a journal belongs to, if there is one (the caller holds the commit lock): the file
    becomes byte for byte what it was before that commit. Idempotent, so a rollback killed half-way is
    simply done again. Returns whether there was a journal."""
    jpath = journal_path(path)
    if not jpath.exists():
        return False
    journal = read_journal(jpath)
    if journal is not None and path.exists():
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, journal.length)
            for off, data in reversed(journal.entries):  # the earliest save of a byte is its original
                _write_all(fd, data, off)
            os.fsync(fd)
        finally:
            os.close(fd)
    jpath.unlink()
    fsync_path(path.parent)
    return True


class _Positioned:
    """The part of a file object h5py's file-object driver uses for reading: seek, tell, readinto."""

    length: int

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = 0

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ValueError(f"whence {whence}")
        base = self._end() if whence == os.SEEK_END else self._pos if whence == os.SEEK_CUR else 0
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _end(self) -> int:
        raise NotImplementedError

    def _bytes(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self._end() - self._pos))
        view[:n] = self._bytes(self._pos, n)
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        n = self._end() - self._pos if size < 0 else size
        buf = bytearray(max(0, n))
        got = self.readinto(buf)
        return bytes(buf[:got])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class JournalFile(_Positioned):
    """The results file opened for an in-place commit, as a file object for `h5py.File(jf, "r+")`.

    Creating it writes and fsyncs the journal's header. Writes at or past `length` go to the file at once;
    writes below it are held (reads see them) until `flush()`, which saves the original contents of all the
    regions they touch (those not saved already) as journal entries, fsyncs the journal once, and then makes
    them: one fsync per flush, not per write. `commit()` is the commit point; without it, the journal stays
    and the commit rolls back.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR)
        super().__init__(fd)
        self.length = os.fstat(fd).st_size  # L
        self._saved: list[tuple[int, int]] = []  # [start, end) regions below L already in the journal
        self._pending: list[tuple[int, bytes]] = []  # writes below L not yet made, in order
        self._jfd = os.open(journal_path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        _write_all(self._jfd, _header(self.length))
        os.fsync(self._jfd)
        fsync_path(path.parent)  # the journal's name is on disk before the file changes

    def _end(self) -> int:
        return max([os.fstat(self._fd).st_size, *(off + len(d) for off, d in self._pending)])

    def _bytes(self, offset: int, length: int) -> bytes:
        out = _read_at(self._fd, offset, length)
        if not self._pending:
            return out
        buf = bytearray(out)
        for off, data in self._pending:  # in order: the last write of a byte wins
            s, e = max(off, offset), min(off + len(data), offset + length)
            if s < e:
                buf[s - offset:e - offset] = data[s - off:e - off]
        return bytes(buf)

    def _unsaved(self, start: int, end: int) -> list[tuple[int, int]]:
        out, pos = [], start
        for s, e in self._saved:
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
        if pos < end:
            out.append((pos, end))
        return out

    def protect(self, offset: int, length: int) -> None:
        """Save the original bytes of [offset, offset + length) below L to the journal, and fsync it."""
        self._protect([(offset, length)])

    def _protect(self, regions: list[tuple[int, int]]) -> None:
        todo: list[tuple[int, int]] = []
        for offset, length in sorted(regions):
            todo += [r for r in self._unsaved(offset, min(offset + length, self.length))
                     if not any(s <= r[0] and r[1] <= e for s, e in todo)]
            todo = self._merged(todo)
        if not todo:
            return
        for s, e in todo:
            self._append(s, _read_at(self._fd, s, e - s))
        os.fsync(self._jfd)
        self._saved = self._merged(self._saved + todo)

    @staticmethod
    def _merged(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
        merged: list[tuple[int, int]] = []
        for s, e in sorted(regions):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        return merged

    def _append(self, offset: int, data: bytes) -> None:
        _write_all(self._jfd, _entry(offset, data))

    def write(self, buf) -> int:
        view = memoryview(buf).cast("B")
        low = max(0, min(len(view), self.length - self._pos))  # how much of it lands below L
        if low:
            self._pending.append((self._pos, bytes(view[:low])))
        if low < len(view):
            self._pwrite(view[low:], self._pos + low)
        self._pos += len(view)
        return len(view)

    def _pwrite(self, view: memoryview, offset: int) -> None:
        _write_all(self._fd, view, offset)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self.flush()
        if size < self.length:
            self.protect(size, self.length - size)
        os.ftruncate(self._fd, size)
        return size

    def flush(self) -> None:
        """Make the held writes, their originals saved first (one fsync of the journal). Durability is the
        commit's business (fsync at `commit`)."""
        if not self._pending:
            return
        self._protect([(off, len(d)) for off, d in self._pending])
        for off, data in self._pending:
            self._pwrite(memoryview(data), off)
        self._pending = []

    def writable(self) -> bool:
        return True

    def commit(self) -> None:
        """The commit point: the file's new state is on disk, then the journal goes."""
        self.flush()
        os.fsync(self._fd)
        self.close()
        journal_path(self.path).unlink()
        fsync_path(self.path.parent)

    def close(self) -> None:
        """Without `commit`: held writes are dropped, the journal stays (the commit is to be rolled back)."""
        self._pending = []
        for fd in (self._fd, self._jfd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._jfd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0


class RollbackView(_Positioned):
    """The file as it was before an unfinished commit, read-only and without touching it: the first `length`
    bytes, with the journal's saved regions in place of what the commit wrote there. For a reader that finds
    a journal its writer left behind (killed)."""

    def __init__(self, fd: int, journal: Journal) -> None:
        super().__init__(fd)
        self.length = journal.length
        self._entries = journal.entries

    def _end(self) -> int:
        return self.length

    def _bytes(self, offset: int, length: int) -> bytes:
        out = bytearray(_read_at(self._fd, offset, length))
        for off, data in reversed(self._entries):  # the earliest save of a byte wins
            s, e = max(off, offset), min(off + len(data), offset + length)
            if s < e:
                out[s - offset:e - offset] = data[s - off:e - off]
        return bytes(out)

    def write(self, buf) -> int:
        raise OSError("the pre-commit view of a results file is read-only")
