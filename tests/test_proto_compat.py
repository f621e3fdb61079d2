"""Wire compatibility of our KServe v2 protocol with the tritonclient package's generated descriptors.

tritonclient registers its own `inference` package in the default descriptor pool, so its descriptors are read in a
subprocess and compared here as plain data: every message we define must have the same fields (name, number, type,
label, message type) there, and every method of our service the same name, types and streaming flags.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from rr_proto.inference import grpc_service_pb2 as ours

DUMP = r"""
import json, sys
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2
proto = descriptor_pb2.FileDescriptorProto()
service_pb2.DESCRIPTOR.CopyToProto(proto)
from google.protobuf import json_format
print(json.dumps({"package": proto.package, "file": json.loads(json_format.MessageToJson(proto))}))
"""


def _describe(file_proto: dict) -> tuple[dict, dict]:
    messages: dict[str, dict] = {}

    def walk(message: dict, prefix: str) -> None:
        name = f"{prefix}.{message['name']}"
        messages[name] = {
            field["name"]: (field["number"], field["type"], field.get("label"), field.get("typeName", ""))
            for field in message.get("field", [])
        }
        for nested in message.get("nestedType", []):
            walk(nested, name)

    for message in file_proto.get("messageType", []):
        walk(message, "." + file_proto["package"])
    services = {
        service["name"]: {
            method["name"]: (
                method["inputType"],
                method["outputType"],
                method.get("clientStreaming", False),
                method.get("serverStreaming", False),
            )
            for method in service["method"]
        }
        for service in file_proto.get("service", [])
    }
    return messages, services


@pytest.fixture(scope="module")
def triton() -> tuple[dict, dict]:
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient (dev extra) is needed for the compatibility check")
    out = subprocess.run([sys.executable, "-c", DUMP], check=True, capture_output=True, text=True).stdout
    return _describe(json.loads(out)["file"])


@pytest.fixture(scope="module")
def mine() -> tuple[dict, dict]:
    from google.protobuf import descriptor_pb2, json_format

    proto = descriptor_pb2.FileDescriptorProto()
    ours.DESCRIPTOR.CopyToProto(proto)
    return _describe(json.loads(json_format.MessageToJson(proto)))


def test_every_message_matches_field_by_field(triton, mine):
    their_messages, _ = triton
    my_messages, _ = mine
    assert len(my_messages) > 20
    for name, fields in my_messages.items():  # map entries too: their value field's type is the map's value type
        assert name in their_messages, f"{name} does not exist in tritonclient's protocol"
        assert fields == {k: v for k, v in their_messages[name].items() if k in fields}, name
        assert set(fields) == set(their_messages[name]), (
            f"{name}: fields differ {set(fields) ^ set(their_messages[name])}"
        )


def test_every_method_matches(triton, mine):
    _, their_services = triton
    _, my_services = mine
    mine_methods = my_services["GRPCInferenceService"]
    assert set(mine_methods) == {
        "ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    }  # fmt: skip
    for method, signature in mine_methods.items():
        assert their_services["GRPCInferenceService"][method] == signature, method


def test_package_and_service_names_are_the_protocols():
    assert ours.DESCRIPTOR.package == "inference"
    assert ours.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == "inference.GRPCInferenceService"
