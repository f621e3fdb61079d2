"""roadrunner.v1.SliceService: chunked, verified, idempotent slice upload and slice status."""

from __future__ import annotations

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_server.errors import InvalidArgument, NotFound
from rr_server.metrics import Metrics
from rr_server.repository import ModelRepository
from rr_server.sessions import SessionPool
from rr_server.slices import SliceStore, check_slice_id


class SliceServicer(rr_grpc.SliceServiceServicer):
    def __init__(
        self, slices: SliceStore, sessions: SessionPool, metrics: Metrics, repository: ModelRepository
    ) -> None:
        self._slices = slices
        self._sessions = sessions
        self._metrics = metrics
        # Loads go through the repository, as RepositoryModelLoad's do: a damaged stored copy is found and removed
        # there (opened straight from the pool, it was refused as INVALID_ARGUMENT at every upload; found by review).
        self._repository = repository

    def UploadSlice(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("an upload starts with a SliceHeader message")
        header = first.header
        slice_id = check_slice_id(header.slice_id)
        cached = None if header.probe else self._slices.get(slice_id)
        gone: NotFound | None = None
        if cached is not None:  # idempotent: the client may stop sending; nothing new is stored
            try:
                self._load_if(header.load, slice_id)
                return rr.UploadSliceResponse(slice_id=slice_id, cached=True, bytes=cached.bytes)
            except NotFound as exc:  # the stored copy was damaged (and removed) or evicted meanwhile
                gone = exc  # the bytes this upload carries replace it
        upload = self._slices.begin(slice_id, header.size_bytes)
        try:
            for request in request_iterator:
                if request.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only chunks may follow the header")
                upload.write(request.chunk)
                self._metrics.upload_bytes.inc(len(request.chunk))
            if header.probe:
                return rr.UploadSliceResponse(slice_id=slice_id, bytes=upload.probe(self._sessions.open_once))
            if gone is not None and not upload.received:  # the header alone: the client is told to upload again
                raise gone
            stored = upload.commit()
        except BaseException:
            upload.abort()
            raise
        self._load_if(header.load, slice_id)
        return rr.UploadSliceResponse(slice_id=slice_id, cached=False, bytes=stored.bytes)

    def _load_if(self, load: bool, slice_id: str) -> None:
        """Open the slice's session now (SliceHeader.load), as RepositoryModelLoad would."""
        if load:
            self._repository.load(slice_id)

    def GetSliceStatus(self, request, context):
        slice_id = check_slice_id(request.slice_id)
        info = self._slices.get(slice_id)
        return rr.GetSliceStatusResponse(
            slice_id=slice_id,
            cached=info is not None,
            bytes=info.bytes if info else 0,
            loaded=self._sessions.loaded(slice_id),
        )
