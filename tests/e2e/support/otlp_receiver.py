"""A small OTLP/gRPC trace receiver for the end-to-end tests.

Serves opentelemetry.proto.collector.trace.v1.TraceService/Export on
127.0.0.1 (port from argv[1], 0 for a free one), prints
`listening on 127.0.0.1:PORT` once bound, then one JSON line per span it is
sent: trace_id, span_id, parent_span_id (hex, "" for a root), name, the
resource's service.name and service.instance.id, and the span's attributes.
With `--count` as argv[2] it prints only a running count of spans (for
measuring the exporter's cost without printing 100,000 lines). Runs until
killed. Needs grpcio and opentelemetry-proto
(scripts/install-otlp-receiver).
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

LOCK = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(any_value, kind))
    return getattr(any_value, kind)


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, count_only):
        self.count_only = count_only
        self.count = 0

    def Export(self, request, context):
        if self.count_only:
            with LOCK:
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        self.count += len(scope_spans.spans)
                print(f"spans {self.count}", flush=True)
            return trace_service_pb2.ExportTraceServiceResponse()
        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        json.dumps(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "service_name": resource.get("service.name"),
                                "instance_id": resource.get("service.instance.id"),
                                "attributes": attributes(span.attributes),
                            }
                        )
                    )
        with LOCK:
            for line in lines:
                print(line)
            sys.stdout.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    count_only = len(sys.argv) > 2 and sys.argv[2] == "--count"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(count_only), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
