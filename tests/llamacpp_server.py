"""Serve a GGUF model with llama.cpp's server until terminated (see tests/llamacpp.py).

Usage: python tests/llamacpp_server.py MODEL.gguf ALIAS MAX_TOKENS, with the API key the
server requires in LLAMA_API_KEY. Prints the server's URL on one line once it listens.
"""

from __future__ import annotations

import os
import signal
import sys

import xllamacpp


def main(model: str, alias: str, max_tokens: int) -> None:
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {alias}
    params.api_keys = [os.environ["LLAMA_API_KEY"]]
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the server picks a free port and reports it
    params.offline = True  # never a download
    params.n_ctx = 2048
    params.n_predict = max_tokens
    # Greedy decoding: the same answer to the same prompt, on any run.
    params.sampling.temp = 0
    params.sampling.seed = 1
    # One thread: two would spin against pytest, Daphne and each other on a 2-core machine.
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.endpoint_metrics = True
    server = xllamacpp.Server(params)  # returns once the model is loaded and the port open
    print(server.listening_address, flush=True)
    signal.pause()  # SIGTERM (the default action) ends the process


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
