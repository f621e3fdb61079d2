"""Client streams that stop sending are closed: seven clients that sent an upload's header and then nothing (while
answering keepalive pings) kept every other client's uploads and reports out of the server for good."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from _server_support import conv_model, serving

from rr_edge.client import Client, slice_id_of
from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_server.errors import DeadlineExceeded
from rr_server.paced import drained, paced


def test_paced_passes_messages_and_errors_and_times_out_a_silent_stream() -> None:
    assert list(paced(iter([1, 2, 3]), 1.0, "M")) == [1, 2, 3]

    def broken():
        yield 1
        raise ValueError("the client's message did not parse")

    with pytest.raises(ValueError, match="did not parse"):
        list(paced(broken(), 1.0, "M"))
    stop = threading.Event()

    def silent():
        yield 1
        stop.wait(10)

    stream = paced(silent(), 0.2, "UploadSlice")
    assert next(stream) == 1
    with pytest.raises(DeadlineExceeded, match="no message from the client for 0.2 s"):
        next(stream)
    stop.set()


def test_the_reader_ends_when_the_handler_stops_reading() -> None:
    """A handler that raised after its first message left the reader blocked for good on a full queue."""
    before = {t for t in threading.enumerate() if t.name.startswith("rr-read-")}
    stream = paced(iter(range(100)), 5.0, "Abandoned")
    assert next(stream) == 0
    stream.close()  # what the handler's exit does to the generator
    deadline = time.monotonic() + 5
    while any(t.name == "rr-read-Abandoned" for t in set(threading.enumerate()) - before):
        assert time.monotonic() < deadline, "the reader thread never ended"
        time.sleep(0.05)


def test_a_silent_upload_is_closed_and_its_slot_serves_another_client(tmp_path) -> None:
    data = conv_model(seed=5)
    with serving(tmp_path / "d", workers=4, stream_idle_s=0.5) as (server, stubs):  # one slot for such streams
        assert server.stream_slots.capacity["other"] == 1
        stop = threading.Event()
        errors: list[grpc.RpcError] = []

        def header_then_nothing():
            yield rr.UploadSliceRequest(header=rr.SliceHeader(slice_id=slice_id_of(data), size_bytes=len(data)))
            stop.wait(30)

        def silent_upload() -> None:
            try:
                stubs.slices.UploadSlice(header_then_nothing(), timeout=20)
            except grpc.RpcError as exc:
                errors.append(exc)

        thread = threading.Thread(target=silent_upload)
        thread.start()
        deadline = time.monotonic() + 5
        while server.stream_slots.in_use["other"] == 0:  # the silent upload holds the one slot
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with Client(server.address) as client:  # waits out Busy for up to 5 s: the slot frees after 0.5 s
            assert client.upload_slice(data, "after the silent one", busy_wait_s=5).bytes == len(data)
        stop.set()
        thread.join()
        assert errors[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED and "no message" in errors[0].details()


def test_drained_cancels_only_when_a_ready_response_waits_too_long() -> None:
    cancelled = threading.Event()
    slow_to_make = (time.sleep(0.3) or n for n in range(2))  # the handler's own time does not count
    assert list(drained(slow_to_make, cancelled.set, 0.2, "M")) == [0, 1] and not cancelled.is_set()
    responses = drained(iter(range(3)), cancelled.set, 0.2, "M")
    assert next(responses) == 0  # then nobody takes the next one for longer than twice 0.2 s
    assert cancelled.wait(5)
    responses.close()


@pytest.mark.parametrize("method", ["Receive", "Exchange"])
def test_an_echo_whose_answer_is_never_read_is_closed_and_frees_its_slot(tmp_path, method) -> None:
    """A client that asks for 256 MiB and reads none of it held its stream slot for good: the server only timed
    out a client that sent nothing (found by review)."""
    import queue

    with serving(tmp_path / "d", workers=4, stream_idle_s=0.5) as (server, stubs):
        if method == "Receive":
            call = stubs.echo.Receive(rr.ReceiveRequest(bytes=256 << 20))
        else:
            asked: queue.SimpleQueue = queue.SimpleQueue()
            asked.put(rr.ExchangeRequest(reply_bytes=256 << 20))
            call = stubs.echo.Exchange(iter(asked.get, None))
        deadline = time.monotonic() + 10
        while server.stream_slots.in_use["other"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stream_slots.in_use["other"] == 1
        while server.stream_slots.in_use["other"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stream_slots.in_use["other"] == 0  # closed by the server: nobody read for 2 x 0.5 s
        call.cancel()
