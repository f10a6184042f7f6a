"""A Treaty RPC client in Python, from the .proto files alone: starts the Echo flow on a node
and streams its progress. Proof that any language with gRPC can integrate.

    python echo_client.py PROTO_DIR HOST:PORT USER PASSWORD TO MESSAGE CA_FILE

CA_FILE is the certificate (DER, as in a node directory, or PEM) that the node's RPC
certificate must chain to: NODE_DIR/certs/root.der, the network root. Use "-" for a node
with `tls = false`.

Prints one JSON document: the progress steps seen and the flow's final state.
"""
import atexit
import importlib
import json
import os
import shutil
import ssl
import sys
import tempfile

import grpc
from grpc_tools import protoc


def load_stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="treaty-py-")
    atexit.register(shutil.rmtree, out, True)
    proto = os.path.join(proto_dir, "treaty", "rpc", "v1", "node.proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", proto])
    if rc != 0:
        sys.exit(f"protoc failed on {proto} ({rc})")
    sys.path.insert(0, out)
    return importlib.import_module("treaty.rpc.v1.node_pb2"), importlib.import_module("treaty.rpc.v1.node_pb2_grpc")


def open_channel(address, ca_file):
    if ca_file == "-":
        return grpc.insecure_channel(address)
    with open(ca_file, "rb") as f:
        ca = f.read()
    if not ca.startswith(b"-----BEGIN"):
        ca = ssl.DER_cert_to_PEM_cert(ca).encode()
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca))


def main():
    proto_dir, address, user, password, to, message, ca_file = sys.argv[1:8]
    pb, rpc = load_stubs(proto_dir)
    metadata = (("treaty-user", user), ("treaty-password", password))
    with open_channel(address, ca_file) as channel:
        node = rpc.NodeStub(channel)
        info = node.GetNodeInfo(pb.Empty(), metadata=metadata)
        started = node.StartFlow(
            pb.StartFlowRequest(name="Echo", args_json=json.dumps({"to": to, "message": message})), metadata=metadata
        )
        progress, final = [], None
        for event in node.WatchFlow(pb.FlowRef(flow_id=started.flow_id), metadata=metadata):
            kind = event.WhichOneof("event")
            if kind == "progress":
                progress.append(event.progress)
            elif kind == "finished":
                final = event.finished
        try:
            node.StartFlow(pb.StartFlowRequest(name="NoSuchFlow", args_json="{}"), metadata=metadata)
            unknown = None
        except grpc.RpcError as e:
            unknown = {"code": e.code().name, "details": e.details()}
    print(json.dumps({
        "node": info.legal_name,
        "flows": list(info.flows),
        "flow_id": started.flow_id,
        "progress": progress,
        "status": final.status if final else None,
        "result": json.loads(final.result_json) if final and final.result_json else None,
        "unknown_flow_error": unknown,
    }))


if __name__ == "__main__":
    main()
