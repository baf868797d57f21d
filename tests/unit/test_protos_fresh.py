"""The committed stubs in src/distlab/proto must be exactly what the .proto sources produce."""

from __future__ import annotations

import runpy
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
GENERATOR = runpy.run_path(str(REPOSITORY / "scripts" / "gen_protos.py"))


def test_committed_stubs_match_proto_sources(tmp_path: Path) -> None:
    generated = {path.name: path.read_bytes() for path in GENERATOR["generate"](tmp_path)}
    proto_package = REPOSITORY / "src" / "distlab" / "proto"
    committed = {
        path.name: path.read_bytes()
        for path in proto_package.iterdir()
        if path.name.endswith(GENERATOR["GENERATED_SUFFIXES"])
    }
    regenerate = "run `.venv/bin/python scripts/gen_protos.py` and commit the result"
    assert sorted(committed) == sorted(generated), f"stub files differ; {regenerate}"
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert not stale, f"stale generated stubs {stale}; {regenerate}"


def test_every_proto_is_package_distlab_v1() -> None:
    for source in GENERATOR["proto_sources"]():
        assert "\npackage distlab.v1;\n" in source.read_text(), source.name
