"""Regenerate the README's generated parts (config keys, round scalars, attack arrays, provenance attributes, import
drawing) from the code.

    python tools/readme_tables.py          # rewrite README.md in place
    python tools/readme_tables.py --check  # exit 1 if README.md is out of date (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

from hpcrobust.config import describe
from hpcrobust.store.schema import ATTACK_ARRAYS, ATTEMPT_ATTRS, ROUND, ROUND_ATTRS, ROUND_SCALARS

sys.path.insert(0, str(Path(__file__).resolve().parent))
import import_graph  # noqa: E402  (tools/ is not a package)

README = Path(__file__).resolve().parents[1] / "README.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def tables() -> dict[str, list[str]]:
    keys = ["| key | default | meaning |", "|---|---|---|"]
    keys += [f"| `{k}` | `{_cell(d)}` | {_cell(doc)} |" for k, d, doc in describe()]
    scalars = ["| dataset | meaning |", "|---|---|"] + [f"| `{k}` | {_cell(v)} |" for k, v in ROUND_SCALARS.items()]
    arrays = ["| dataset | meaning |", "|---|---|"] + [f"| `{k}` | {_cell(v)} |" for k, v in ATTACK_ARRAYS.items()]
    rattrs = ["| attribute | meaning |", "|---|---|"] + [f"| `{k}` | {_cell(v)} |" for k, v in ROUND_ATTRS.items()
                                                         if k != ROUND]
    aattrs = ["| attribute | meaning |", "|---|---|"] + [f"| `{k}` | {_cell(v)} |" for k, v in ATTEMPT_ATTRS.items()]
    graph = ["```", *import_graph.drawing(import_graph.module_graph()).rstrip().splitlines(), "```"]
    return {"config-keys": keys, "round-scalars": scalars, "attack-arrays": arrays, "round-attrs": rattrs,
            "attempt-attrs": aattrs, "import-graph": graph}


def render(text: str) -> str:
    for name, rows in tables().items():
        start, end = f"<!-- generated:{name} -->", f"<!-- end:{name} -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + start + "\n" + "\n".join(rows) + "\n" + end + tail
    return text


def main() -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        return int(new != text)
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
