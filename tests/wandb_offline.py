"""Read wandb offline runs back (`wandb/offline-run-*/run-<id>.wandb`) without a server, for the tests.

A .wandb file is a 7-byte header (":W&B", magic 0xBEE1, version) followed by a LevelDB-style log: 32 KiB
blocks of records, each with a 7-byte header (checksum, length, type: full / first / middle / last)
holding a serialized `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a .wandb file"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind == 0 and n == 0:
            break
        buf = chunk if kind in (FULL, FIRST) else buf + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


@dataclass
class OfflineRun:
    folder: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    history: list[dict] = field(default_factory=list)  # one dict per logged step, values decoded from JSON

    def table(self, row: dict, key: str) -> dict:
        """A logged wandb.Table (its JSON file under files/)."""
        return json.loads((self.folder / "files" / row[f"{key}/path"]).read_text())


def read_offline_runs(root: Path) -> list[OfflineRun]:
    out = []
    for folder in sorted(root.glob("wandb/offline-run-*")):
        run = OfflineRun(folder)
        for rec in records(next(folder.glob("run-*.wandb"))):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run.run_id, run.project = rec.run.run_id, rec.run.project
                run.name, run.group = rec.run.display_name, rec.run.run_group
            elif kind == "history":
                run.history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                    for i in rec.history.item})
        out.append(run)
    return out
