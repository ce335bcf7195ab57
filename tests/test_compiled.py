"""The hot modules setup.py compiles with mypyc give exactly what their plain Python
gives, and an edited module is never shadowed by its older compiled build."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

from loader.compiled import (
    COMPILED_MODULES,
    SHARED_LIBRARY,
    SOURCES_RECORD,
    compiled_path,
    stale_modules,
)
from loader.sources.sample import write_archive
from tests.helpers import identify, track, write_ndjson

ROOT = Path(__file__).resolve().parent.parent

# Every file read four ways (tuples; encoded for binary COPY with nothing known; with the
# columns typed against the data; through a selective-sync filter), each result
# written out as plain JSON-able values so the two runs compare field by field.
READ_ALL = r"""
import hashlib, json, pickle, sys
from pathlib import Path
from loader.compiled import running_compiled
from loader.encode.file_reader import EncodeContext, ReadOptions, read_file
from loader.rules.schema import ColumnType
from loader.rules.selective_sync import parse
from loader.sources.archive import list_files
from loader.warehouses.postgres import CAPABILITIES

RULES = '''
version: 1
targets:
  t:
    web:
      collections: [pages, aliases]
      properties:
        "*": [context_page_*, context_ip]
        identifies: [age]
'''
sync, issues = parse(RULES, "selective_sync.yml")
assert not issues
known = {
    "order_completed": {
        "revenue": ColumnType.BIGINT, "note": ColumnType.BOOLEAN, "ratio": ColumnType.DOUBLE
    },
    "identifies": {"age": ColumnType.TEXT, "plan": ColumnType.DOUBLE},
}
T = "2026-11-30T00:00:00Z"
ways = {
    "tuples": (ReadOptions(), None),
    "encoded": (ReadOptions(encoder=CAPABILITIES.row_encoder), EncodeContext({}, T)),
    "typed": (
        ReadOptions(
            encoder=CAPABILITIES.row_encoder,
            row_bytes=CAPABILITIES.max_row_bytes,
            rescued_bytes=2000,
        ),
        EncodeContext(known, T),
    ),
    "filtered": (ReadOptions(row_filter=sync.filter_for("t", "web")), None),
}

def plain(read):
    return {
        "lines": read.lines, "ids": read.ids, "duplicates": read.duplicates,
        "rejects": [[r.file, r.line, r.reason] for r in read.rejects],
        "users": sorted(read.users), "accounts": sorted(read.accounts),
        "tables": {t: [c.names, [list(map(repr, r)) for r in c.rows], repr(c.rescued)]
                   for t, c in sorted(read.tables.items())},
        "encoded": {t: [[list(e.columns), hashlib.sha256(e.payload).hexdigest(), e.row_ends,
                         e.ids, {k: v.value for k, v in e.types.items()},
                         {k: [v.first.value, v.saw_double] for k, v in e.evidence.items()},
                         e.rescued_at, e.rescued_cut] for e in parts]
                    for t, parts in sorted(read.encoded.items())},
        "decided": repr(read.decided),
    }

out = {"compiled": running_compiled(), "reads": {}}
for way, (options, context) in ways.items():
    for f in list_files(sys.argv[1]):
        read = read_file(f, options, context)
        # As a reader process sends it to the loader.
        read = pickle.loads(pickle.dumps(read, protocol=pickle.HIGHEST_PROTOCOL))
        out["reads"][f"{way} {Path(f.url).name}"] = plain(read)
print(json.dumps(out))
"""


def _read_all(archive: Path, pure: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_PURE_PYTHON"}
    if pure:
        env["SLUICE_PURE_PYTHON"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", READ_ALL, str(archive)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return json.loads(done.stdout)


def test_compiled_and_plain_python_read_every_file_alike(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    write_archive(archive, 3000, events_per_file=1000, malformed=True)
    awkward = [
        track("a1", note=True, revenue="12", id="x", event="y", nested={"deep": {"er": [1, 2]}}),
        track("a2", revenue=2**62, note="maybe", Revenue=3, items=[], blank="", nested={}),
        track("a3", event="Tracks", **{"ünï cödé": 1.5, "a-b": None, "context": {"ip": 1}}),
        identify("a4", "u9", "2026-11-01T10:00:00+02:00", "2026-11-01T10:00:00Z", age=30),
        identify("a5", "u9", "2026-11-01T10:00:00", "2026-11-01T10:00:01Z", plan="pro", age="x"),
        {
            "type": "group",
            "messageId": "a6",
            "userId": 5,
            "groupId": 7,
            "traits": {"n": 1},
            "receivedAt": "2026-11-01T10:00:00Z",
        },
        {
            "type": "alias",
            "messageId": "a7",
            "anonymousId": "an",
            "previousId": "p",
            "receivedAt": "2026-11-01T10:00:00Z",
            "sentAt": "2026-11-01T10:00:05Z",
            "originalTimestamp": "2026-11-01T10:00:03Z",
        },
        {
            "type": "page",
            "messageId": "a8",
            "userId": "u",
            "name": "Home",
            "properties": {"name": "Home", "title": "t"},
            "receivedAt": "2026-11-01T10:00:00Z",
        },
        {"type": "track", "messageId": "a9", "userId": "u", "receivedAt": "never"},
        track("a1", note=False),  # a duplicate within the file
        b'{"type":"track","messageId":"a10","userId":"u","event":"Order Completed",'
        b'"receivedAt":"2026-11-01T10:00:00Z","properties":{"revenue":%d,"list":[%d]}}'
        % (2**70, 2**70),
        # Keys sharing a column, reserved names, near-timestamps, a boolean id.
        {
            **track(
                "a11",
                orderId="A",
                order_id="B",
                a={"b": 1},
                a_b=2,
                größe=3,
                grüße=4,
                context_ip="x",
                user_id="y",
                userId="z",
                seen="2026-11-01",
                order_no="2024010112345",
                at="2026-11-01 10:00",
                revenue="r" * 5000,  # rescued from the known bigint: cut to 2000 bytes
                **{"Order ID": "C", "from": 5, "_from": 6},
            ),
            "userId": True,
            "context": {"userAgent": "ua", "user_agent": "UA"},
        },
        # Numbers at the edge of exact: compiled code must not compare them as doubles.
        track("a13", ratio=2**53 + 1, revenue=2.0**63),
        track("a14", ratio=2**53 + 2, revenue=2.0**62),
        # Wider than a PostgreSQL row: its last values are rescued.
        track("a12", **{f"w{i:03d}": i for i in range(1200)}),
    ]
    write_ndjson(archive / "segment-logs" / "other" / "1" / "awkward.gz", awkward)

    plain = _read_all(archive, pure=True)
    native = _read_all(archive, pure=False)

    built = any(compiled_path(name) for name in COMPILED_MODULES)
    assert plain["compiled"] is False
    assert native["compiled"] is built  # the build compiled them: this compares C to Python
    assert len(plain["reads"]) == 4 * 4
    assert any(r["rejects"] for r in plain["reads"].values())
    assert any(r["encoded"] for r in plain["reads"].values())
    assert any(r["tables"] for r in plain["reads"].values())
    for key, expected in plain["reads"].items():
        assert native["reads"][key] == expected, key


def test_a_module_edited_after_compiling_or_left_unbuilt_is_stale(tmp_path: Path) -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]

    def beside(name: str, ending: str) -> Path:  # "rules.schema" -> rules/schema<ending>
        *folders, leaf = name.split(".")
        return tmp_path.joinpath(*folders, leaf + ending)

    for name in COMPILED_MODULES:
        beside(name, ".py").parent.mkdir(exist_ok=True)
        beside(name, ".py").write_text(f"# {name}\n")
    assert stale_modules(tmp_path) == []  # nothing compiled: nothing stale
    for name in (*COMPILED_MODULES, SHARED_LIBRARY):
        beside(name, suffix).write_bytes(b"")
    record = {
        name: hashlib.sha256(beside(name, ".py").read_bytes()).hexdigest()
        for name in COMPILED_MODULES
    }
    (tmp_path / SOURCES_RECORD).write_text(json.dumps(record))
    # Built from these sources, whatever the file times (an installer writes .py last).
    for name in COMPILED_MODULES:
        os.utime(beside(name, suffix), (1_000, 1_000))
    assert stale_modules(tmp_path) == []
    beside("rules.normalize", ".py").write_text("# normalize, edited\n")
    assert stale_modules(tmp_path) == ["rules.normalize"]
    beside("rules.schema", suffix).unlink()  # a build that failed part way
    assert stale_modules(tmp_path) == ["rules.schema", "rules.normalize"]
    beside(SHARED_LIBRARY, suffix).unlink()  # shims without their code
    assert stale_modules(tmp_path) == list(COMPILED_MODULES)
    (tmp_path / SOURCES_RECORD).unlink()  # no record of what was compiled
    beside(SHARED_LIBRARY, suffix).write_bytes(b"")
    beside("rules.schema", suffix).write_bytes(b"")
    assert stale_modules(tmp_path) == list(COMPILED_MODULES)


def test_pure_python_can_be_forced_by_the_environment() -> None:
    code = (
        "import loader.rules.normalize, loader.encode.encoded;"
        "from loader.compiled import running_compiled;"
        "print(running_compiled(), loader.rules.normalize.__file__.endswith('.py'))"
    )
    env = dict(os.environ, SLUICE_PURE_PYTHON="1")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split() == ["False", "True"]


def test_setup_compiles_exactly_the_modules_the_package_checks() -> None:
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    (listed,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED"
    ]
    paths = ast.literal_eval(listed)
    assert sorted(paths) == sorted(
        "loader/" + name.replace(".", "/") + ".py" for name in COMPILED_MODULES
    )
    assert 'group_name="loader._native"' in (ROOT / "setup.py").read_text()
    assert SHARED_LIBRARY == "_native__mypyc"  # mypyc names it <group_name>__mypyc
