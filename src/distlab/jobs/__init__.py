"""Job scheduler for AI-style work (resources, priorities, leases, gang scheduling).

Not built yet: only its gRPC contract exists, in ``distlab/proto/jobs.proto``."""
