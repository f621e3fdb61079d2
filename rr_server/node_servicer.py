"""roadrunner.v1.NodeService: node registry and what this server is."""

from __future__ import annotations

from rr_proto.roadrunner.v1 import roadrunner_pb2 as rr
from rr_proto.roadrunner.v1 import roadrunner_pb2_grpc as rr_grpc
from rr_server.auth import require_writer
from rr_server.convert import device_to_dict, node_to_pb, role_from_pb
from rr_server.errors import InvalidArgument, NotFound, PermissionDenied
from rr_server.records import check_id
from rr_server.storage import Storage

MAX_DESCRIPTOR_BYTES = 16 * 1024  # every node's descriptor is in each ListNodes answer


class NodeServicer(rr_grpc.NodeServiceServicer):
    def __init__(self, storage: Storage, server_info: rr.GetServerInfoResponse) -> None:
        self._storage = storage
        self._info = server_info

    def RegisterNode(self, request, context):
        node_id = check_id(request.node_id, "node_id")
        require_writer(node_id)
        if node_id == self._info.cloud_node_id:
            raise PermissionDenied(f"node id {node_id!r} is reserved for this server's own row")
        if request.role == rr.NODE_ROLE_CLOUD:  # a cloud row would be one nobody can report for
            raise PermissionDenied(
                f"the cloud role is this server's own row ({self._info.cloud_node_id!r}); register as an edge"
            )
        _check_device(request.device)
        node, created = self._storage.upsert_node(node_id, role_from_pb(request.role), device_to_dict(request.device))
        return rr.RegisterNodeResponse(node=node_to_pb(node), created=created)

    def GetNode(self, request, context):
        node = self._storage.get_node(request.node_id)
        if node is None:
            raise NotFound(f"node {request.node_id!r} is not registered")
        return rr.GetNodeResponse(node=node_to_pb(node))

    def ListNodes(self, request, context):
        return rr.ListNodesResponse(nodes=[node_to_pb(n) for n in self._storage.list_nodes()])

    def GetServerInfo(self, request, context):
        return self._info


def _check_device(device: rr.DeviceDescriptor) -> None:
    if device.ByteSize() > MAX_DESCRIPTOR_BYTES:
        raise InvalidArgument(f"the device descriptor is {device.ByteSize()} bytes; at most {MAX_DESCRIPTOR_BYTES}")
    for name in ("cpu_cores", "memory_bytes", "intra_op_threads", "inter_op_threads"):
        if getattr(device, name) < 0:
            raise InvalidArgument(f"device {name} must not be negative, got {getattr(device, name)}")
