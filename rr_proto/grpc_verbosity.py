"""Imported by `rr-server` and `rr-edge` before grpc: gRPC's C core then logs errors only, unless $GRPC_VERBOSITY
says otherwise. At its default it wrote an INFO line to stderr for every client that failed the TLS handshake,
outside the server's logging: anyone able to connect could break `--log-format json` (walkthrough). The core reads
the variable once, when grpc is first imported."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
