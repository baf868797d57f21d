"""gRPC/protobuf contracts (package ``distlab.v1``) and their committed generated stubs.

Regenerate with ``python scripts/gen_protos.py``; tests/unit/test_protos_fresh.py fails when the
committed stubs differ from what the .proto sources produce."""
