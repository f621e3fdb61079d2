"""Review 5 of the server (found by review): the cloud's whole-model runs forgotten before its row records a new
provider, bearer tokens bounded inside gRPC's metadata limit, an edge token file with a byte-order mark, a response
laid out as a stream item measured as one built later, and messages that name what they are about (a long request
id, runs forgotten, not timed again) without showing a token or a line the file does not have."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from _server_support import conv_model, serving, sha256
from test_cloud_profiler_review3 import with_a_gone_providers_model_run
from test_server_review4 import bearer

from rr_edge.cli import main as edge_main
from rr_edge.client_options import check_token
from rr_edge.errors import ArgumentError
from rr_proto import framing
from rr_proto.framing import ENVELOPE_BYTES
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.transport import MAX_TOKEN_LENGTH
from rr_server.auth import TokenTable
from rr_server.errors import ResourceExhausted
from rr_server.inference_servicer import InferenceServicer
from rr_server.records import ModelRun
from rr_server.storage import Storage

# -- the cloud's whole-model runs on another provider --------------------------------------------------------------


def test_a_start_that_fails_between_the_two_writes_keeps_no_run_of_the_old_provider(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """The row recorded the new provider, then the whole-model runs were forgotten, in two transactions: a start
    that failed (a full disk) or died between them left the row on the new provider, and every later start served
    the old provider's runs. Whichever of the two writes comes second fails here."""
    with_a_gone_providers_model_run(tmp_path)

    writes: list[str] = []
    upsert_node, forget_model_runs = Storage.upsert_node, Storage.forget_model_runs

    def second_write_fails(name: str) -> None:
        writes.append(name)
        if len(writes) == 2:
            raise ResourceExhausted("database or disk is full")

    def upsert(self, node_id, role, device):  # type: ignore[no-untyped-def]
        if node_id == "cloud":
            second_write_fails("upsert_node")
        return upsert_node(self, node_id, role, device)

    def forget(self, node_id):  # type: ignore[no-untyped-def]
        second_write_fails("forget_model_runs")
        return forget_model_runs(self, node_id)

    monkeypatch.setattr(Storage, "upsert_node", upsert)
    monkeypatch.setattr(Storage, "forget_model_runs", forget)
    with pytest.raises(ResourceExhausted, match="disk is full"), serving(tmp_path):
        pass
    assert sorted(writes) == ["forget_model_runs", "upsert_node"]
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="rr_server"), serving(tmp_path) as (server, stubs):
        assert server.cloud_profiler.wait_idle(30)
        runs = stubs.predictions.Predict(rr.PredictRequest(node_id="cloud", model="net"), timeout=10)
        assert 0.0 < runs.model_latency_ms < 1e5  # timed again on this provider; the 1e6 ms run is gone


def test_the_log_says_the_runs_are_forgotten(tmp_path: Path, caplog) -> None:
    """It said "timed again" when no whole-model slice was stored to time them with: the runs were only gone."""
    with serving(tmp_path) as (server, _):
        device = server.storage.get_node("cloud").device
        server.storage.upsert_node("cloud", "cloud", {**device, "ort_providers": ["GoneExecutionProvider"]})
        server.storage.add_reports([], {}, {}, [ModelRun("cloud", "net", 1e6, 0.0, measured_at=1.0)])
    with caplog.at_level(logging.WARNING, logger="rr_server"), serving(tmp_path) as (server, _):
        providers = server.sessions.providers
    (message,) = [r.getMessage() for r in caplog.records if "whole-model runs" in r.getMessage()]
    assert message.startswith(f"1 whole-model runs were timed on GoneExecutionProvider, not {providers[0]}: forgotten")
    assert ": timed again" not in message


# -- bearer tokens ----------------------------------------------------------------------------------------------------


def test_a_token_longer_than_gRPC_carries_reliably_is_refused_at_start_on_both_ends(tmp_path: Path) -> None:
    """gRPC refuses a call whose metadata pass 8 KiB at random, past 16 KiB every one: a 9,000-character token
    passed both checks and 11 of 40 calls failed. The longest token allowed is served every time."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {'a' * MAX_TOKEN_LENGTH}\nbob {'b' * (MAX_TOKEN_LENGTH + 1)}\n")
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(tokens))}:2: node 'bob': a bearer token is at most 4,096 "
    ) as err:
        TokenTable.from_file(tokens)
    assert "bbbb" not in str(err.value)
    with pytest.raises(ArgumentError, match=r"^\$RR_TOKEN: a bearer token is at most 4,096 characters .* has 9,000$"):
        check_token("x" * 9000, "$RR_TOKEN")
    assert check_token("x" * MAX_TOKEN_LENGTH) == "x" * MAX_TOKEN_LENGTH

    tokens.write_text(f"alice {'a' * MAX_TOKEN_LENGTH}\n")
    with serving(tmp_path / "data", auth_token_file=tokens) as (_, stubs):
        for _ in range(40):
            request = rr.RegisterNodeRequest(node_id="alice")
            assert stubs.nodes.RegisterNode(request, timeout=10, metadata=bearer("a" * MAX_TOKEN_LENGTH)).node.node_id


def test_the_edge_reads_its_token_file_with_a_byte_order_mark_as_the_server_does(tmp_path: Path) -> None:
    """Saved by Windows Notepad: the server took its own token file, and the edge refused its one, U+FEFF first."""
    tokens, edge_token, model = tmp_path / "tokens", tmp_path / "edge.tok", tmp_path / "slice.onnx"
    tokens.write_bytes("\ufeffalice tok-alice\r\n".encode())
    edge_token.write_bytes("\ufefftok-alice\r\n".encode())
    model.write_bytes(conv_model())
    with serving(tmp_path / "data", auth_token_file=tokens) as (server, _):
        assert edge_main(["upload", str(model), "--server", server.address, "--token-file", str(edge_token)]) == 0
        assert server.slices.get(sha256(model.read_bytes())) is not None


@pytest.mark.parametrize("separator", ["\x0b", "\x85", "\x0c", "\u2028"])
def test_a_line_break_other_than_a_line_feed_inside_a_token_names_its_own_line(tmp_path: Path, separator) -> None:
    """str.splitlines split a line at a vertical tab or U+0085 too: the error named a line the file did not have."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice tok-alice\nbob tok{separator}bob\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tokens))}:2: expected 'node_id token', found 3 fields"):
        TokenTable.from_file(tokens)


def test_a_long_token_put_in_the_node_id_field_is_not_shown(tmp_path: Path) -> None:
    """The columns swapped: the error showed the token's first 40 characters as the invalid node id."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# node token\n" + "T" * 300 + " alice\n")
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(tokens))}:2: the first field, the node id, has 300 "
    ) as err:
        TokenTable.from_file(tokens)
    assert "TT" not in str(err.value)


# -- response size ----------------------------------------------------------------------------------------------------


def test_a_response_laid_out_as_a_stream_item_is_measured_as_one_built_afterwards() -> None:
    """Laid out in place, a stream response's length held the stream item's field, which the size check took off
    again: the same response at the limit passed when encode_outputs built it (a shape's first request) and was
    refused once it was laid out in place (the next ones)."""
    outputs = {"y": np.arange(70_000, dtype=np.float32).reshape(700, 100)}
    built = framing.encode_outputs("m", "1", "id", outputs)
    laid_out, (array,) = framing.allocate_response("m", "1", "id", [("y", np.dtype(np.float32), (700, 100))], True)
    array[...] = outputs["y"]
    for response in (built, laid_out):
        response.set_run_ms(1.5)
    size = framing.encoded_size(built)
    assert framing.encoded_size(laid_out) == size == len(framing.serialize_infer_response(laid_out))
    # a server whose limit this size meets exactly, with the framing a stream item adds: both pass, or neither
    for limit, passes in ((size - ENVELOPE_BYTES + 6, True), (size - ENVELOPE_BYTES + 5, False)):
        servicer = InferenceServicer(None, "v", lambda: True, limit)  # type: ignore[arg-type]
        for response in (built, laid_out):
            if passes:
                servicer._check_response_size(response, "m")
            else:
                with pytest.raises(ResourceExhausted):
                    servicer._check_response_size(response, "m")


def test_a_response_too_big_for_its_request_id_says_so() -> None:
    """The response repeats the request id: a long one was blamed on the outputs' names and shapes."""
    response = framing.encode_outputs("m", "1", "i" * 70_000, {"y": np.ones(4, np.float32)})
    servicer = InferenceServicer(None, "v", lambda: True, 1024)  # type: ignore[arg-type]
    with pytest.raises(ResourceExhausted) as err:
        servicer._check_response_size(response, "m")
    assert "(16 of output contents, 70,000 of request id, " in str(err.value)
    assert "a shorter request id" in str(err.value)
