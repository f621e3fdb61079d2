"""Bearer-token authentication: a token file maps each node id to its token.

File format: UTF-8 text (a byte-order mark allowed), one `node_id token` per line; blank lines and lines starting
with `#` are ignored. Node ids are record ids (`rr_server.records.check_id`), tokens printable ASCII without spaces,
the rule the edge applies to its own (`rr_proto.transport.token_fault`): gRPC sends nothing else in metadata.
Clients send `authorization: Bearer <token>` metadata. A caller is identified by its token; a node may only write
its own data.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path

from rr_proto.limits import MAX_ID_LENGTH
from rr_proto.transport import token_fault
from rr_server.errors import InvalidArgument, PermissionDenied, Unauthenticated
from rr_server.records import check_id

_HEADER = "authorization"
_SCHEME = "bearer "


class TokenTable:
    """Token -> node id lookup with constant-time comparison."""

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise ValueError("token table is empty")
        self._by_node = dict(tokens)

    @classmethod
    def from_file(cls, path: Path) -> TokenTable:
        """The table in `path`; ValueError naming the file and line of what is wrong. Read as utf-8-sig: in a file
        saved with a byte-order mark (Windows Notepad) the first node id began with U+FEFF, and that node's writes
        were refused as another's (found by review). Lines end at line feeds alone (read_text turns CR LF and CR
        into one): str.splitlines also split at a vertical tab or U+0085 inside a token, and the error named a line
        the file does not have."""
        tokens: dict[str, str] = {}
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8-sig").split("\n"), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(
                    f"{path}:{lineno}: expected 'node_id token', found {len(parts)} fields (a space, tab or other "
                    "whitespace separates them)"
                )
            node_id, token = parts
            if len(node_id) > MAX_ID_LENGTH:  # not shown: a token put first, with the node id second
                raise ValueError(
                    f"{path}:{lineno}: the first field, the node id, has {len(node_id):,} characters, over "
                    f"{MAX_ID_LENGTH}; a line is 'node_id token', in that order"
                )
            try:
                check_id(node_id, "node id")
            except InvalidArgument as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
            fault = token_fault(token)
            if fault is not None:
                raise ValueError(f"{path}:{lineno}: node {node_id!r}: {fault}")
            if node_id in tokens:
                raise ValueError(f"{path}:{lineno}: node {node_id!r} listed twice")
            holder = next((n for n, t in tokens.items() if hmac.compare_digest(t.encode(), token.encode())), None)
            if holder is not None:  # the caller would be whichever node comes last: refuse the ambiguity
                raise ValueError(f"{path}:{lineno}: node {node_id!r} has the same token as node {holder!r}")
            tokens[node_id] = token
        if not tokens:
            raise ValueError(f"{path}: no 'node_id token' line (an empty table would refuse every call)")
        return cls(tokens)

    def node_of(self, token: str) -> str | None:
        found = None
        for node_id, known in self._by_node.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = node_id
        return found

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        """Node id of the caller; raises Unauthenticated when the bearer token is missing or unknown."""
        header = next((str(value) for key, value in metadata if key.lower() == _HEADER), None)
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        if not header.lower().startswith(_SCHEME):
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        node_id = self.node_of(header[len(_SCHEME) :].strip())
        if node_id is None:
            raise Unauthenticated("invalid bearer token")
        return node_id


def caller() -> str | None:
    """Node id the interceptor authenticated for the current call (None when the server runs without auth)."""
    return CALLER.get()


def require_writer(node_id: str) -> None:
    """Raise PermissionDenied unless the current caller may write data for `node_id`."""
    who = CALLER.get()
    if who is not None and who != node_id:
        raise PermissionDenied(f"caller is node {who!r}; it may not write data for node {node_id!r}")


# Set by the interceptor around each authenticated call (sync server: one call per worker thread at a time).
CALLER: ContextVar[str | None] = ContextVar("rr_caller", default=None)
