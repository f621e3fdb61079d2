"""roadrunner.v1.SliceService: chunked, verified, idempotent slice upload and slice status."""

from __future__ import annotations

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_server.errors import InvalidArgument
from rr_server.metrics import Metrics
from rr_server.sessions import SessionPool
from rr_server.slices import SliceInfo, SliceStore, check_slice_id


class SliceServicer(rr_grpc.SliceServiceServicer):
    def __init__(self, slices: SliceStore, sessions: SessionPool, metrics: Metrics) -> None:
        self._slices = slices
        self._sessions = sessions
        self._metrics = metrics

    def UploadSlice(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("an upload starts with a SliceHeader message")
        header = first.header
        slice_id = check_slice_id(header.slice_id)
        cached = None if header.probe else self._slices.get(slice_id)
        if cached is not None:  # idempotent: the client may stop sending; nothing new is stored
            self._load_if(header.load, cached)
            return rr.UploadSliceResponse(slice_id=slice_id, cached=True, bytes=cached.bytes)
        upload = self._slices.begin(slice_id, header.size_bytes)
        try:
            for request in request_iterator:
                if request.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only chunks may follow the header")
                upload.write(request.chunk)
                self._metrics.upload_bytes.inc(len(request.chunk))
            if header.probe:
                return rr.UploadSliceResponse(slice_id=slice_id, bytes=upload.probe(self._sessions.open_once))
            stored = upload.commit()
        except BaseException:
            upload.abort()
            raise
        self._load_if(header.load, stored)
        return rr.UploadSliceResponse(slice_id=slice_id, cached=False, bytes=stored.bytes)

    def _load_if(self, load: bool, info: SliceInfo) -> None:
        """Open the slice's session now (SliceHeader.load), as RepositoryModelLoad would."""
        if load:
            self._sessions.get(info.slice_id, info.path)

    def GetSliceStatus(self, request, context):
        slice_id = check_slice_id(request.slice_id)
        info = self._slices.get(slice_id)
        return rr.GetSliceStatusResponse(
            slice_id=slice_id,
            cached=info is not None,
            bytes=info.bytes if info else 0,
            loaded=self._sessions.loaded(slice_id),
        )
