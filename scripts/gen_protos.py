"""Regenerate the committed protobuf and gRPC stubs from src/distlab/proto/*.proto.

    .venv/bin/python scripts/gen_protos.py

Compiles with --proto_path=src so the generated modules import each other as
``from distlab.proto import common_pb2`` rather than by bare module name (grpc/grpc#29459).
Type stubs come from mypy-protobuf (``_pb2.pyi`` and ``_pb2_grpc.pyi``). The tool versions are
pinned in pyproject.toml's dev extra: tests/unit/test_protos_fresh.py regenerates into a
temporary directory and fails when the committed files differ.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
SOURCE_ROOT = REPOSITORY / "src"
PROTO_PACKAGE = SOURCE_ROOT / "distlab" / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_sources() -> list[Path]:
    return sorted(PROTO_PACKAGE.glob("*.proto"))


def generate(output_root: Path) -> list[Path]:
    """Compile every .proto into output_root (laid out like src/); return the files written."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    binary_directory = Path(sys.executable).parent
    include = Path(protoc.__file__).parent / "_proto"
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={SOURCE_ROOT}",
        f"--proto_path={include}",
        f"--python_out={output_root}",
        f"--grpc_python_out={output_root}",
        f"--plugin=protoc-gen-mypy={binary_directory / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={binary_directory / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={output_root}",
        f"--mypy_grpc_out={output_root}",
        *[str(path.relative_to(SOURCE_ROOT)) for path in proto_sources()],
    ]
    (output_root / "distlab" / "proto").mkdir(parents=True, exist_ok=True)
    status = protoc.main(arguments)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    return sorted(
        path
        for path in (output_root / "distlab" / "proto").iterdir()
        if path.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        written = generate(Path(scratch))
        for stale in PROTO_PACKAGE.iterdir():
            if stale.name.endswith(GENERATED_SUFFIXES):
                stale.unlink()
        for path in written:
            shutil.copyfile(path, PROTO_PACKAGE / path.name)
            print(f"wrote {(PROTO_PACKAGE / path.name).relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
