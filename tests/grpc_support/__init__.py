"""gRPC services and backends for the relay and gRPC tests (no code generation)."""
