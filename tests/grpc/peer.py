#!/usr/bin/python3
"""Both gRPC peers of the gRPC end-to-end test (tests/e2e/grpc.rs), on Google's gRPC
(Debian's python3-grpcio): an independent implementation on each side of gatewayd.
Messages are raw bytes (no protobuf), so no generated code is needed.

  peer.py server [NAME]                serves gatewayd.test.Echo on 127.0.0.1, an ephemeral
                                       port; prints "listening on 127.0.0.1:PORT"; its
                                       Name method answers NAME ("server" by default), as do
                                       the conformance suite's GrpcEcho/Echo, EchoTwo, EchoThree
                                       (these return the request's metadata as echo-*
                                       trailers)
  peer.py client TARGET AUTHORITY CALL runs one call (JSON, see `call`) through TARGET
                                       and prints its outcome as one JSON line
  peer.py session TARGET AUTHORITY     runs the calls read from stdin (one JSON per line)
                                       on one channel, printing each outcome as a line:
                                       a long-lived client, as real gRPC clients are
"""

import json
import queue
import sys
import time
import zlib
from concurrent import futures

try:
    import grpc
except ImportError:
    sys.exit("python3-grpcio is missing: run `cargo xtask setup` (CI installs it)")

SERVICE = "gatewayd.test.Echo"
CONFORMANCE_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
# A call through the gateway must never wait on a forgotten proxy variable.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
# Keeps workers free while a test waits on deadlines.
SERVER_WORKERS = 16
SLOW_CALL_POLL_SECONDS = 0.05


def echoed_metadata(context):
    """The request's x-* metadata, returned to the client under echo-NAME."""
    return tuple(
        ("echo-" + key, value)
        for key, value in context.invocation_metadata()
        if key.startswith("x-")
    )


def request_metadata(context):
    """Every text metadata key of the request under echo-KEY, its values in arrival
    order joined by commas (one field or several read the same, as in HTTP)."""
    values = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, str):
            values.setdefault(key, []).append(value)
    return tuple(("echo-" + key, ",".join(v)) for key, v in values.items())


def unary(request, context):
    context.send_initial_metadata((("x-initial", "hello"),))
    context.set_trailing_metadata(
        echoed_metadata(context)
        + (("x-trailer", "kept"), ("x-trailer-bin", b"\x00\x01\xfe\xff"))
    )
    return request


def fail(request, context):
    context.set_trailing_metadata((("x-reason", "missing"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item: caf\u00e9 100%")


def slow(request, context):
    """Sleeps the seconds the request names, unless the call ends first."""
    until = time.monotonic() + float(request.decode())
    while time.monotonic() < until and context.is_active():
        time.sleep(SLOW_CALL_POLL_SECONDS)
    return request


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield b"item-%d" % i


def client_stream(request_iterator, context):
    count = total = 0
    for message in request_iterator:
        count += 1
        total += len(message)
    return b"messages=%d bytes=%d" % (count, total)


def bidi(request_iterator, context):
    for message in request_iterator:
        yield b"re:" + message


def serve(name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_WORKERS))
    handlers = {
        "Name": grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode()),
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    # The Gateway API conformance suite's echo service: every method answers NAME, so a
    # test sees which backend a route chose, and returns the request's metadata as the
    # suite's echo server does (tests/e2e/conformance/grpc_route.rs).
    def conformance_echo(request, context):
        context.set_trailing_metadata(request_metadata(context))
        return name.encode()

    conformance = dict(
        (method, grpc.unary_unary_rpc_method_handler(conformance_echo))
        for method in ("Echo", "EchoTwo", "EchoThree")
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(SERVICE, handlers),
            grpc.method_handlers_generic_handler(CONFORMANCE_SERVICE, conformance),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening on 127.0.0.1:%d" % port, flush=True)
    server.wait_for_termination()


def text(value):
    return value.decode("latin-1") if isinstance(value, bytes) else value


def payloads(call):
    """The request messages: `messages` as text, or one `size`-byte message."""
    if "size" in call:
        return [bytes(i % 251 for i in range(call["size"]))]
    return [m.encode() for m in call.get("messages", [])]


def describe(messages):
    """Messages by length and CRC-32, so megabytes compare without being printed."""
    return [{"len": len(m), "crc32": zlib.crc32(m)} for m in messages]


def open_channel(target, authority):
    options = CHANNEL_OPTIONS + [("grpc.default_authority", authority)]
    return grpc.insecure_channel(target, options=options)


def client(target, authority, call):
    with open_channel(target, authority) as channel:
        run_call(channel, call)


def session(target, authority):
    with open_channel(target, authority) as channel:
        for line in sys.stdin:
            run_call(channel, json.loads(line))


def run_call(channel, call):
    """One call: {"method": "/pkg.Svc/Method", "kind": "unary" | "server_stream" |
    "client_stream" | "bidi", "messages": [...] or "size": N, "metadata": {...},
    "timeout": seconds}."""
    requests = payloads(call)
    metadata = tuple(call.get("metadata", {}).items())
    timeout = call.get("timeout", 10)
    outcome = {"sent": describe(requests)}
    kind = call.get("kind", "unary")
    method = call["method"]
    try:
        if kind == "unary":
            response, rpc = channel.unary_unary(method).with_call(
                requests[0], timeout=timeout, metadata=metadata
            )
            responses = [response]
        elif kind == "client_stream":
            response, rpc = channel.stream_unary(method).with_call(
                iter(requests), timeout=timeout, metadata=metadata
            )
            responses = [response]
        elif kind == "server_stream":
            rpc = channel.unary_stream(method)(
                requests[0], timeout=timeout, metadata=metadata
            )
            responses = list(rpc)
        elif kind == "bidi":
            # Ping-pong: each message goes out only after the answer to the one
            # before came back, so a proxy that waited for the whole request
            # stream would hang the call until its deadline.
            answered = queue.Queue()

            def ping_pong():
                for i, message in enumerate(requests):
                    if i > 0:
                        answered.get(timeout=timeout)
                    yield message

            rpc = channel.stream_stream(method)(
                ping_pong(), timeout=timeout, metadata=metadata
            )
            responses = []
            for response in rpc:
                responses.append(response)
                answered.put(response)
        else:
            sys.exit("unknown call kind %r" % kind)
        code, details = rpc.code(), rpc.details()
    except grpc.RpcError as error:
        rpc, responses = error, []
        code, details = error.code(), error.details()
    outcome.update(
        code=code.name,
        details=details,
        received=describe(responses),
        responses=[m.decode("latin-1") for m in responses if len(m) <= 256],
        initial=dict((k, text(v)) for k, v in (rpc.initial_metadata() or ())),
        trailing=dict((k, text(v)) for k, v in (rpc.trailing_metadata() or ())),
    )
    print(json.dumps(outcome), flush=True)


def main():
    if sys.argv[1:2] == ["server"] and len(sys.argv) <= 3:
        serve(sys.argv[2] if len(sys.argv) == 3 else "server")
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 5:
        client(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif sys.argv[1:2] == ["session"] and len(sys.argv) == 4:
        session(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
