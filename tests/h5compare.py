"""Compare two results files dataset by dataset (timings and provenance excepted: store/schema.py PROVENANCE, the
attempts group; they say where and when a number was computed, which differs between attempts and rank counts)."""

from __future__ import annotations

import h5py
import numpy as np

from hpcrobust.store.schema import ATTEMPTS, PROVENANCE

SKIP = ("wall_time",)


def datasets(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if name.split("/")[0] == ATTEMPTS:
                return
            if isinstance(obj, h5py.Dataset) and not name.split("/")[-1].startswith(SKIP):
                out[name] = obj[()]
            elif isinstance(obj, h5py.Group):
                for k, v in obj.attrs.items():
                    if k not in PROVENANCE:
                        out[f"{name}@{k}"] = v
        f.visititems(visit)
        out["@science_hash"] = f.attrs["science_hash"]
    return out


def assert_same(a, b, subset: bool = False, root_attrs: bool = True) -> int:
    """Every dataset and attribute equal; with `subset`, b may hold fewer (a sweep with fewer rounds), and
    without `root_attrs` the files' configs may differ (in the number of rounds, say)."""
    da, db = datasets(a), datasets(b)
    if not root_attrs:  # the config (and so each run's planned number of rounds) may differ
        da, db = ({k: v for k, v in d.items() if not k.startswith("@") and not k.endswith("@rounds")}
                  for d in (da, db))
    if subset:
        da = {k: v for k, v in da.items() if k in db}
    assert sorted(da) == sorted(db), set(da) ^ set(db)
    for k in da:
        x, y = np.asarray(da[k]), np.asarray(db[k])
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), f"{k}: {x} != {y}"
        else:
            assert np.array_equal(x, y), f"{k}: {x} != {y}"
    return len(da)
