"""CLI sub-commands of `rr-edge`, one module each (see rr_edge.cli)."""
