"""Serves a GGUF model with llama.cpp's own OpenAI-compatible HTTP server
(the xllamacpp wheel) on 127.0.0.1, for the tests of agentmesh-llm.

    python llm_server.py GGUF PORT

PORT 0 picks a free port. Prints `listening on 127.0.0.1:PORT` once the
server is started (it may still be loading: poll /health), then serves until
stdin closes or the process is terminated, so a test that dies takes the
server with it.
"""

import signal
import socket
import sys

import xllamacpp


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: llm_server.py GGUF PORT")
    gguf, port = sys.argv[1], int(sys.argv[2])
    if port == 0:
        port = free_port()
    p = xllamacpp.CommonParams()
    p.model.path = gguf
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_ctx = 4096
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    p.use_jinja = True
    p.embedding = True
    # The OpenAI /v1/embeddings endpoint needs one vector per input: mean
    # pooling (the model's own default, none, is refused there).
    p.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    server = xllamacpp.Server(p)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Blocks until the parent closes our stdin (or dies).
    sys.stdin.read()
    del server


if __name__ == "__main__":
    main()
