"""The upstream client: HTTP and the wire formats of xAI's APIs, nothing of Django.

Three API styles are spoken: xAI's Responses API (the default for api.x.ai), OpenAI-style
chat completions (the default for any other server) and the Anthropic-compatible messages
API. Each turns a stream of Server-Sent Events into `Delta`s while filling in an `Answer`
that the caller keeps, so whatever already arrived survives a stop, a timeout or an error.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import time
import weakref
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict
from urllib.parse import urlsplit

import httpx
import orjson
from httpx_sse import EventSource, ServerSentEvent

from chat.billing import TOKEN_FIELDS, Price, price_from_language_model

logger = logging.getLogger(__name__)

API_STYLES = ("chat_completions", "responses", "anthropic_messages")
# XAI_API_STYLE may also say "auto": resolve_api_style() picks one of API_STYLES.
AUTO_STYLE = "auto"
# Hosts that speak the Responses API for sure: xAI's API and its regional endpoints.
XAI_API_HOST = "api.x.ai"


def resolve_api_style(style: str, base_url: str) -> str:
    """The API style to speak: `style` as configured, or for "auto" the Responses API when
    `base_url` is xAI's own (api.x.ai, or a regional *.api.x.ai) and chat completions for
    any other server (llama.cpp, vLLM, Ollama: OpenAI-compatible, often without /responses).
    """
    if style != AUTO_STYLE:
        return style
    host = (urlsplit(base_url.strip()).hostname or "").rstrip(".")
    if host == XAI_API_HOST or host.endswith("." + XAI_API_HOST):
        return "responses"
    return "chat_completions"


# One turn of the history sent upstream: "role" and "content"; for an earlier answer of
# the Responses API its output items as "items" (see Responses.body; others ignore it);
# for a user's turn with images, "images" (each dialect's *_turn() makes them parts).
Turn = dict[str, Any]


@dataclass
class Usage:
    """Token counts as the upstream reported them (a snapshot, never a sum), with
    completion_tokens always counting the answer's tokens without its reasoning.

    xAI's Chat Completions reports reasoning apart (total = prompt + completion +
    reasoning); its Responses API and OpenAI count it inside the completion (total =
    prompt + completion). The total tells which: completion_tokens leaves the reasoning
    out either way, so that each token is priced once. `raw` keeps the report as given.
    """

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_in_usd_ticks: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    # xAI's server-side tools (web and X search, code...): `num_server_side_tools_used`,
    # and `server_side_tool_usage_details` as given ({"web_search_calls": 1, ...}).
    tools_used: int = 0
    tool_usage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_openai(cls, raw: dict[str, Any]) -> Usage:
        return cls._from(raw, "prompt_tokens", "completion_tokens")

    @classmethod
    def from_responses(cls, raw: dict[str, Any]) -> Usage:
        return cls._from(raw, "input_tokens", "output_tokens")

    @classmethod
    def _from(cls, raw: dict[str, Any], prompt_key: str, completion_key: str) -> Usage:
        """Chat Completions and Responses differ only in the names of the two counts."""
        prompt_details = raw.get(f"{prompt_key}_details") or {}
        completion_details = raw.get(f"{completion_key}_details") or {}
        cost = raw.get("cost_in_usd_ticks")
        details = raw.get("server_side_tool_usage_details")
        prompt, completion = _int(raw.get(prompt_key)), _int(raw.get(completion_key))
        reasoning, total = (
            _int(completion_details.get("reasoning_tokens")),
            _int(raw.get("total_tokens")),
        )
        if reasoning and total == prompt + completion and completion >= reasoning:
            completion -= reasoning  # counted inside the completion: out of it
        return cls(
            prompt_tokens=prompt,
            cached_prompt_tokens=_int(prompt_details.get("cached_tokens")),
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            total_tokens=total,
            cost_in_usd_ticks=cost if isinstance(cost, int) else None,
            raw=raw,
            tools_used=_int(raw.get("num_server_side_tools_used")),
            tool_usage={
                str(name): count
                for name, count in (details.items() if isinstance(details, dict) else ())
                if isinstance(count, int) and not isinstance(count, bool) and count >= 0
            },
        )

    @classmethod
    def from_anthropic(cls, raw: dict[str, Any], previous: Usage | None) -> Usage:
        # message_delta usage is cumulative but may omit input_tokens (2024 streams).
        merged = dict(previous.raw) if previous else {}
        merged.update(raw)
        prompt = _int(merged.get("input_tokens"))
        output = _int(merged.get("output_tokens"))
        return cls(
            prompt_tokens=prompt,
            cached_prompt_tokens=_int(merged.get("cache_read_input_tokens")),
            completion_tokens=output,
            reasoning_tokens=0,
            total_tokens=prompt + output,
            raw=merged,
        )

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TOKEN_FIELDS}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class Citation(TypedDict):
    """A source the answer cites: its URL as the upstream gave it, and its title if any."""

    url: str
    title: NotRequired[str]


@dataclass(frozen=True)
class ToolStatus:
    """Where one server-side tool call of a Responses stream stands, as last reported.

    id: the output item's id (`item_id` of its events), the same for every status of one
    call. kind: "web_search", "x_search" (also xAI's X tools, which stream as custom tool
    calls named `x_...`), "custom" (another custom tool call), or the item type without
    `_call` for other tools ("code_interpreter", "mcp", ...). state: "in_progress" (the
    call began), "searching" (the tool runs: its `*.searching` event, or a custom tool's
    input is complete), "completed", or the upstream's own word ("failed", "executing").
    name: the tool's name where the item has one ("web_search", "x_keyword_search").
    query: the search query where the item or its input carries one, else "".
    """

    id: str
    kind: str
    state: str
    name: str = ""
    query: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "name": self.name,
            "query": self.query,
        }


@dataclass
class Delta:
    """What one event added: text, reasoning, and (Responses API) a tool call's new status
    and the citations first seen in it. Only text and reasoning go into the Answer's text."""

    content: str = ""
    reasoning: str = ""
    tool: ToolStatus | None = None
    citations: list[Citation] = field(default_factory=list)


@dataclass
class Answer:
    """Everything known about one answer so far; filled in while the stream is read.

    From the Responses API also:
    - output_items: the items of the final `response.output` (`response.completed` or
      `.incomplete`), verbatim and in order: reasoning items (with `encrypted_content`
      when `store` is false), tool calls and messages, to send back with the next turn.
      Until that event arrives (and if it never does), the items `response.output_item.done`
      carried, in output order.
    - citations: the sources the answer cites inline: each `url_citation` annotation
      (`response.output_text.annotation.added`, and those of the final message items),
      one per URL, in order of first appearance.
    - all_citations: the response's own final `citations` list where the stream carries
      one: every URL the tools looked at, cited or not (xAI's "all citations").
    - tool_calls_seen: each server-side tool call's latest ToolStatus, by item id, in the
      order the calls began.
    """

    content_parts: list[str] = field(default_factory=list)
    reasoning_parts: list[str] = field(default_factory=list)
    model: str = ""
    response_id: str = ""
    system_fingerprint: str = ""
    finish_reason: str = ""
    usage: Usage | None = None
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    first_token_at: float | None = None
    accepted: bool = False  # an attempt got a streaming 200: the upstream began to answer
    output_items: list[dict[str, Any]] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    all_citations: list[str] = field(default_factory=list)
    tool_calls_seen: dict[str, ToolStatus] = field(default_factory=dict)
    # The Responses dialect's reading state: items done by output index, custom tools'
    # input so far by item id, the URLs cited, and the reasoning part last read.
    done_items: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)
    tool_inputs: dict[str, str] = field(default_factory=dict, repr=False)
    cited_urls: set[str] = field(default_factory=set, repr=False)
    reasoning_part: tuple[Any, ...] | None = field(default=None, repr=False)

    @property
    def content(self) -> str:
        return "".join(self.content_parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts)

    def add(self, delta: Delta) -> None:
        if delta.content:
            self.content_parts.append(delta.content)
        if delta.reasoning:
            self.reasoning_parts.append(delta.reasoning)
        # A tool's status or a citation is no token: the time to first token stays open.
        extras_only = not (delta.content or delta.reasoning) and (
            delta.tool is not None or bool(delta.citations)
        )
        if self.first_token_at is None and not extras_only:
            self.first_token_at = time.monotonic()


@dataclass(frozen=True)
class RequestOptions:
    """What a request may set besides the model and the messages; None: the upstream's
    default. Each dialect sends them by its API's own names (see its body())."""

    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: str | None = None
    # Responses API: whether xAI keeps the response (30 days); off, the encrypted
    # reasoning the app keeps itself is all there is of the model's thinking.
    store: bool = False
    # A conversation's prompt cache key: Responses `prompt_cache_key`, Chat Completions
    # header `x-grok-conv-id`; the same on every turn routes them to the same cache.
    cache_key: str | None = None
    # Server-side tools ({"type": "web_search", ...}: chat.search), Responses API only.
    tools: tuple[dict[str, Any], ...] = ()


NO_OPTIONS = RequestOptions()


def _plain_turns(messages: list[Turn]) -> list[Turn]:
    """The turns without what only the Responses API reads (an answer's output items)."""
    return [{k: v for k, v in m.items() if k != "items"} if "items" in m else m for m in messages]


def _system_prompt(messages: list[Turn]) -> str:
    """The system turns' text, for the APIs that take it apart from the turns."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "system")


def _sampling(options: RequestOptions) -> dict[str, Any]:
    """temperature and top_p, which the three APIs name alike."""
    fields = {"temperature": options.temperature, "top_p": options.top_p}
    return {name: value for name, value in fields.items() if value is not None}


class UpstreamError(Exception):
    """A failure of the upstream, with a message fit to show the user."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


class StreamEnd(Exception):
    """Raised by a dialect when the stream says it is over (`[DONE]`, message_stop)."""


# ---------------------------------------------------------------------------
# Redaction

REDACTED = "[redacted]"


def redact(text: str, secret: str) -> str:
    """`text` with `secret` replaced in every form an error message may quote it."""
    for form in _quoted_forms(secret):
        text = text.replace(form, REDACTED)
    return text


@functools.lru_cache(maxsize=8)
def _quoted_forms(secret: str) -> tuple[str, ...]:
    """The secret as given and stripped, escaped as repr() and JSON write it (h11 quotes a
    header it refuses as bytes: b'Bearer xai-...\\r\\n'), and each long piece between
    control characters; longest first, so that a longer form goes before its pieces."""
    if not secret:
        return ()
    forms = {
        secret,
        secret.strip(),
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
        json.dumps(secret)[1:-1],
    }
    forms.update(piece for piece in re.split(r"[\x00-\x20\x7f-\xa0]+", secret) if len(piece) >= 8)
    return tuple(sorted((form for form in forms if form), key=len, reverse=True))


# ---------------------------------------------------------------------------
# Error bodies and statuses

STATUS_TEXT = {
    400: "The upstream refused the request (400)",
    401: "No valid API key was sent to the upstream (401)",
    403: "The API key or team is blocked or lacks permission (403)",
    404: "The model or endpoint was not found upstream (404)",
    405: "The upstream does not allow this method (405)",
    408: "The upstream timed out reading the request (408)",
    413: "The request is too large for the upstream (413)",
    415: "The upstream could not read the request body (415)",
    422: "The upstream rejected a field of the request (422)",
    429: "The upstream's rate or spending limit was reached (429)",
}


def error_text(body: Any) -> tuple[str, str]:
    """The (code, text) of an error body in xAI's, OpenAI's or Anthropic's shape."""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    if isinstance(error, str):  # xAI: {"code": "...", "error": "text"}
        code = body.get("code")
        return (code if isinstance(code, str) else ""), error
    if isinstance(error, dict):  # OpenAI / Anthropic: {"error": {"message": ...}}
        code = error.get("code") or error.get("type") or ""
        message = error.get("message") or ""
        return str(code), str(message)
    message = body.get("message") or body.get("detail")
    return "", message if isinstance(message, str) else ""


def is_credit_exhaustion(text: str) -> bool:
    lowered = text.lower()
    return "credit" in lowered or "spending limit" in lowered or "quota" in lowered


def describe_status(status: int, body_text: str) -> UpstreamError:
    try:
        body = parse_json(body_text) if body_text else None
    except ValueError:
        body = None
    code, text = error_text(body)
    if not text and body is None:
        text = body_text.strip()[:500]
    summary = STATUS_TEXT.get(status) or (
        f"The upstream service failed ({status})" if status >= 500 else f"Upstream error {status}"
    )
    retryable = status >= 500 or (status == 429 and not is_credit_exhaustion(text))
    message = f"{summary}: {text}" if text else summary
    return UpstreamError(message, status=status, code=code, retryable=retryable)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Dialects: one per API style. Each builds the request and reads its events.


def _object(event: ServerSentEvent) -> dict[str, Any] | None:
    """The event's JSON object, None for anything else; StreamEnd at OpenAI's `[DONE]`."""
    data = event.data
    if data.startswith("[DONE]"):
        raise StreamEnd
    if not data or data.isspace():  # (strip() would copy every chunk's text)
        return None
    try:
        obj = _loads(data)
    except ValueError:
        # Not its text: it could hold anything the upstream echoed, the key included.
        logger.warning("upstream sent an event that is not JSON (%d characters)", len(data))
        return None
    return obj if isinstance(obj, dict) else None


def _loads(data: str) -> Any:
    if "\\u0000" not in data:  # (orjson reads NUL escapes, which no database saves)
        try:
            return orjson.loads(data)  # a quarter of json's time, and this runs for every chunk
        except orjson.JSONDecodeError:
            pass
    # What orjson refuses and Python accepts (a lone surrogate, NaN) reads as before.
    return parse_json(data)


# A lone surrogate (half of a pair) and NUL: neither UTF-8 nor PostgreSQL text holds them.
UNENCODABLE = re.compile("[\x00\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with what no database can save replaced by U+FFFD.

    Lone surrogates come only from JSON escapes: none of the recorded upstreams escapes
    non-ASCII text (they send UTF-8, which cannot hold a surrogate), so a pair split
    across two chunks is not something to join; each half is replaced.
    """
    return UNENCODABLE.sub("\ufffd", text)


def _encodable_json(value: Any) -> Any:
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, list):
        return [_encodable_json(item) for item in value]
    if isinstance(value, dict):
        return {encodable(key): _encodable_json(item) for key, item in value.items()}
    return value


def parse_json(text: str) -> Any:
    """Python's json.loads, with every string made encodable (see encodable())."""
    return _encodable_json(json.loads(text))


def _raise_if_error(obj: dict[str, Any]) -> None:
    if "error" in obj and obj["error"]:
        code, text = error_text(obj)
        raise UpstreamError(
            f"The upstream stopped with an error: {text or 'no reason given'}", code=code
        )


# ---------------------------------------------------------------------------
# Images: a user's turn may carry "images": [{"type": "image/png", "data": <base64>}]
# (chat.attachments.load_images); each dialect sends them as its API's content parts,
# before the text, as xAI's and Anthropic's examples put them. Turns without images go
# as they are: plain text content.


def data_url(image: dict[str, str]) -> str:
    return f"data:{image['type']};base64,{image['data']}"


def _with_parts(turn: Turn, parts: list[dict[str, Any]], text_part: dict[str, Any]) -> Turn:
    """`turn` with its content as `parts` then its text; no `images` key left."""
    rest = {key: value for key, value in turn.items() if key != "images"}
    return {**rest, "content": [*parts, text_part]} if parts else rest


def _images(turn: Turn) -> list[dict[str, str]]:
    return [image for image in turn.get("images") or () if image.get("data")]


def chat_completions_turn(turn: Turn) -> Turn:
    """Chat Completions: `image_url` parts next to a `text` part."""
    if "images" not in turn:
        return turn
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in _images(turn)]
    return _with_parts(turn, parts, {"type": "text", "text": turn["content"]})


def responses_turn(turn: Turn) -> Turn:
    """Responses: `input_image` parts (a data URL, detail auto) next to an `input_text`."""
    if "images" not in turn:
        return turn
    parts = [
        {"type": "input_image", "image_url": data_url(i), "detail": "auto"} for i in _images(turn)
    ]
    return _with_parts(turn, parts, {"type": "input_text", "text": turn["content"]})


def anthropic_turn(turn: Turn) -> Turn:
    """Anthropic Messages: base64 `image` blocks next to a `text` block."""
    if "images" not in turn:
        return turn
    parts = [
        {"type": "image", "source": {"type": "base64", "media_type": i["type"], "data": i["data"]}}
        for i in _images(turn)
    ]
    return _with_parts(turn, parts, {"type": "text", "text": turn["content"]})


class ChatCompletions:
    name = "chat_completions"
    path = "/chat/completions"

    def body(
        self, model: str, messages: list[Turn], options: RequestOptions = NO_OPTIONS
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [chat_completions_turn(m) for m in _plain_turns(messages)],
            "stream": True,
            "stream_options": {"include_usage": True},
            **_sampling(options),
        }
        # xAI's recorded name is max_tokens (max_completion_tokens: no evidence it is read).
        if options.max_output_tokens is not None:
            body["max_tokens"] = options.max_output_tokens
        if options.reasoning_effort:
            body["reasoning_effort"] = options.reasoning_effort
        return body

    def feed(self, event: ServerSentEvent, answer: Answer) -> Delta | None:
        obj = _object(event)
        if obj is None:
            return None
        _raise_if_error(obj)
        return apply_chat_chunk(answer, obj)


def apply_chat_chunk(answer: Answer, chunk: dict[str, Any]) -> Delta | None:
    """Fold one chat.completion.chunk into `answer`; return the text it carried."""
    if isinstance(chunk.get("model"), str):
        answer.model = chunk["model"]
    if isinstance(chunk.get("id"), str) and not answer.response_id:
        answer.response_id = chunk["id"]
    if isinstance(chunk.get("system_fingerprint"), str):
        answer.system_fingerprint = chunk["system_fingerprint"]
    if isinstance(chunk.get("usage"), dict):
        answer.usage = Usage.from_openai(chunk["usage"])
    delta = Delta()
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        # xAI's overview page once showed `message` where streams send `delta`.
        part = choice.get("delta")
        if not isinstance(part, dict):
            message = choice.get("message")
            part = message if isinstance(message, dict) else {}
        content = part.get("content")
        if isinstance(content, str):
            delta.content += content
        reasoning = part.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = part.get("reasoning")  # OpenRouter
        if isinstance(reasoning, str):
            delta.reasoning += reasoning
        for call in part.get("tool_calls") or ():
            _add_tool_call(answer, call)
        if choice.get("finish_reason"):
            answer.finish_reason = str(choice["finish_reason"])
    return delta if (delta.content or delta.reasoning) else None


def _add_tool_call(answer: Answer, call: Any) -> None:
    if not isinstance(call, dict):
        return
    index = call.get("index", len(answer.tool_calls))
    slot = answer.tool_calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    if call.get("id"):
        slot["id"] = call["id"]
    function = call.get("function") or {}
    if function.get("name"):
        slot["name"] = function["name"]
    if isinstance(function.get("arguments"), str):
        slot["arguments"] += function["arguments"]


class Responses:
    name = "responses"
    path = "/responses"

    def body(
        self, model: str, messages: list[Turn], options: RequestOptions = NO_OPTIONS
    ) -> dict[str, Any]:
        # The system prompt is the request's `instructions`, not a turn of `input`.
        system = _system_prompt(messages)
        body: dict[str, Any] = {
            "model": model,
            "input": self.input(messages),
            "stream": True,
            "store": options.store,
            # The app keeps the history and sends it whole (no previous_response_id): the
            # reasoning items must carry their encrypted content to be sent back.
            "include": ["reasoning.encrypted_content"],
            **_sampling(options),
        }
        if system:
            body["instructions"] = system
        if options.cache_key:
            body["prompt_cache_key"] = options.cache_key
        if options.max_output_tokens is not None:
            body["max_output_tokens"] = options.max_output_tokens
        if options.reasoning_effort:
            body["reasoning"] = {"effort": options.reasoning_effort}
        if options.tools:
            body["tools"] = [dict(tool) for tool in options.tools]
        return body

    @staticmethod
    def input(messages: list[Turn]) -> list[Turn]:
        """The `input`: each turn as a message, except an earlier answer that has output
        items, whose items (reasoning with its encrypted content, tool calls, the message)
        go instead, verbatim and in order, as xAI asks of a client that keeps the history."""
        items: list[Turn] = []
        for turn in messages:
            if turn["role"] == "system":
                continue
            if turn["role"] == "assistant" and turn.get("items"):
                items.extend(turn["items"])
            else:
                items.append(responses_turn({k: v for k, v in turn.items() if k != "items"}))
        return items

    def feed(self, event: ServerSentEvent, answer: Answer) -> Delta | None:
        obj = _object(event)
        if obj is None:
            return None
        kind = obj.get("type") or event.event
        if kind == "error" or (kind is None and "error" in obj):
            message = obj.get("message") or error_text(obj)[1] or "no reason given"
            raise UpstreamError(f"The upstream stopped with an error: {message}")
        if not isinstance(kind, str):
            return None
        if kind == "response.output_text.delta":
            return Delta(content=str(obj.get("delta") or ""))
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return _reasoning_delta(answer, kind, obj)
        if kind == "response.output_text.annotation.added":
            citation = _add_citation(answer, obj.get("annotation"))
            return Delta(citations=[citation]) if citation else None
        if kind in ("response.output_item.added", "response.output_item.done"):
            return _output_item(answer, obj, done=kind.endswith(".done"))
        if kind.startswith("response.custom_tool_call_input."):
            return _custom_tool_input(answer, kind, obj)
        tool_event = TOOL_EVENT.fullmatch(kind)
        if tool_event:
            base, state = tool_event.groups()
            return _track_tool(answer, ToolStatus(_item_id(obj), _tool_kind(base, ""), state))
        response = obj.get("response")
        if isinstance(response, dict):
            if kind == "response.created":  # (a retry's new response: nothing of the old)
                answer.output_items, answer.done_items = [], {}
                answer.tool_inputs, answer.reasoning_part = {}, None
            answer.response_id = str(response.get("id") or answer.response_id)
            answer.model = str(response.get("model") or answer.model)
            if isinstance(response.get("usage"), dict):
                answer.usage = Usage.from_responses(response["usage"])
            if kind in ("response.completed", "response.incomplete"):
                _final_response(answer, response)
            if kind == "response.completed":
                answer.finish_reason = "stop"
                raise StreamEnd
            if kind in ("response.incomplete", "response.failed"):
                details = response.get("incomplete_details") or {}
                answer.finish_reason = str(details.get("reason") or kind.split(".")[1])
                if kind == "response.failed":
                    _, text = error_text(response)
                    raise UpstreamError(f"The upstream stopped with an error: {text or 'failed'}")
                raise StreamEnd
        return None


# A server-side tool's progress: response.web_search_call.searching, .x_search_call.completed
# (not .function_call_arguments.*, .custom_tool_call_input.*: their word before the dot
# does not end in _call).
TOOL_EVENT = re.compile(r"response\.(\w+)_call\.(\w+)")
# Once a call has ended, a late progress event does not make it look busy again.
FINAL_TOOL_STATES = frozenset({"completed", "failed", "incomplete"})


def _reasoning_delta(answer: Answer, kind: str, obj: dict[str, Any]) -> Delta:
    """The reasoning text of one delta; a blank line before the first delta of each new
    summary part (or reasoning item), so that parts do not run into one another."""
    text = str(obj.get("delta") or "")
    part = (
        kind,
        obj.get("item_id", obj.get("output_index")),
        obj.get("summary_index", obj.get("content_index")),
    )
    if text and part != answer.reasoning_part:
        if any(answer.reasoning_parts):
            text = "\n\n" + text
        answer.reasoning_part = part
    return Delta(reasoning=text)


def _add_citation(answer: Answer, annotation: Any) -> Citation | None:
    """Keep a `url_citation` whose URL is new to the answer; return it, else None."""
    if not isinstance(annotation, dict) or annotation.get("type") != "url_citation":
        return None
    url = annotation.get("url")
    if not isinstance(url, str) or not url or url in answer.cited_urls:
        return None
    citation: Citation = {"url": url}
    title = annotation.get("title")
    if isinstance(title, str) and title:
        citation["title"] = title
    answer.cited_urls.add(url)
    answer.citations.append(citation)
    return citation


def _message_citations(answer: Answer, item: dict[str, Any]) -> list[Citation]:
    """The new citations among a message item's annotations (their events may be missing)."""
    found: list[Citation] = []
    if item.get("type") != "message" or not isinstance(item.get("content"), list):
        return found
    for part in item["content"]:
        annotations = part.get("annotations") if isinstance(part, dict) else None
        for annotation in annotations if isinstance(annotations, list) else ():
            citation = _add_citation(answer, annotation)
            if citation:
                found.append(citation)
    return found


def _output_item(answer: Answer, obj: dict[str, Any], done: bool) -> Delta | None:
    item = obj.get("item")
    if not isinstance(item, dict):
        return None
    index = obj.get("output_index")
    if not isinstance(index, int) or isinstance(index, bool):
        index = max(answer.done_items, default=-1) + 1
    citations: list[Citation] = []
    if done:
        # Done items can arrive out of output order (parallel searches): keep the output's.
        answer.done_items[index] = item
        answer.output_items = [answer.done_items[i] for i in sorted(answer.done_items)]
        citations = _message_citations(answer, item)
    status = _item_status(item, index, done)
    delta = _track_tool(answer, status) if status else None
    if citations:
        delta = delta or Delta()
        delta.citations = citations
    return delta


def _item_status(item: dict[str, Any], index: int, done: bool) -> ToolStatus | None:
    """The status an output item gives its tool call; None for what is no server-side
    tool call (messages, reasoning, function calls, which the app's client would run)."""
    item_type = item.get("type")
    if not isinstance(item_type, str) or not item_type.endswith("_call"):
        return None
    if item_type == "function_call":
        return None
    name = item.get("name") if isinstance(item.get("name"), str) else ""
    item_id = item.get("id")
    state = "in_progress"
    if done:
        status = item.get("status")
        ended = isinstance(status, str) and status and status != "in_progress"
        state = str(status) if ended else "completed"
    return ToolStatus(
        id=item_id if isinstance(item_id, str) and item_id else f"output-{index}",
        kind=_tool_kind(item_type[: -len("_call")], str(name)),
        state=state,
        name=str(name),
        query=_item_query(item),
    )


def _tool_kind(base: str, name: str) -> str:
    """ "web_search" for web_search_call items and events, and so on; xAI's X search
    streams as custom tool calls named x_keyword_search, x_semantic_search, ..."""
    if base == "custom_tool":
        return "x_search" if name.startswith("x_") else "custom"
    return base


def _item_query(item: dict[str, Any]) -> str:
    """The search query of a tool call item: OpenAI's (and newer xAI's) `action.query`,
    else the `query` of its JSON `arguments` (older xAI) or `input` (custom tools)."""
    action = item.get("action")
    if isinstance(action, dict) and isinstance(action.get("query"), str) and action["query"]:
        return str(action["query"])
    return _json_query(item.get("arguments")) or _json_query(item.get("input"))


def _json_query(text: Any) -> str:
    if not isinstance(text, str) or not text:
        return ""
    try:
        value = _loads(text)
    except ValueError:
        return ""
    query = value.get("query") if isinstance(value, dict) else None
    return query if isinstance(query, str) else ""


def _item_id(obj: dict[str, Any]) -> str:
    item_id = obj.get("item_id")
    return item_id if isinstance(item_id, str) and item_id else f"output-{obj.get('output_index')}"


def _custom_tool_input(answer: Answer, kind: str, obj: dict[str, Any]) -> Delta | None:
    """A custom tool's input streams as JSON pieces: a status once it is complete (with
    its query, if it has one), nothing for each piece."""
    item_id = _item_id(obj)
    if kind.endswith(".delta"):
        if isinstance(obj.get("delta"), str):
            answer.tool_inputs[item_id] = answer.tool_inputs.get(item_id, "") + obj["delta"]
        return None
    if not kind.endswith(".done"):
        return None
    text = answer.tool_inputs.pop(item_id, "")
    if isinstance(obj.get("input"), str):
        text = obj["input"]
    return _track_tool(answer, ToolStatus(item_id, "custom", "searching", query=_json_query(text)))


def _track_tool(answer: Answer, status: ToolStatus) -> Delta | None:
    """Record `status` as its call's latest, completed with what was known before; a
    Delta carrying it if anything changed, else None."""
    previous = answer.tool_calls_seen.get(status.id)
    if previous is not None:
        state = status.state
        if previous.state in FINAL_TOOL_STATES and state not in FINAL_TOOL_STATES:
            state = previous.state
        # The item knew the kind and name best; an event's kind is a guess from its name.
        status = ToolStatus(
            id=status.id,
            kind=previous.kind,
            state=state,
            name=previous.name or status.name,
            query=status.query or previous.query,
        )
        if status == previous:
            return None
    answer.tool_calls_seen[status.id] = status
    return Delta(tool=status)


def _final_response(answer: Answer, response: dict[str, Any]) -> None:
    """What `response.completed` (or `.incomplete`) says of the whole answer."""
    output = response.get("output")
    if isinstance(output, list) and output:
        answer.output_items = [item for item in output if isinstance(item, dict)]
    for index, item in enumerate(answer.output_items):
        _message_citations(answer, item)
        status = _item_status(item, index, done=True)
        if status is not None:
            _track_tool(answer, status)
    citations = response.get("citations")
    seen = set(answer.all_citations)
    for entry in citations if isinstance(citations, list) else ():
        url = entry.get("url") if isinstance(entry, dict) else entry
        if isinstance(url, str) and url and url not in seen:
            seen.add(url)
            answer.all_citations.append(url)


class AnthropicMessages:
    name = "anthropic_messages"
    path = "/messages"

    # The Messages API requires max_tokens: this, unless the conversation sets its own.
    DEFAULT_MAX_TOKENS = 8192

    def body(
        self, model: str, messages: list[Turn], options: RequestOptions = NO_OPTIONS
    ) -> dict[str, Any]:
        system = _system_prompt(messages)
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                anthropic_turn(m) for m in _plain_turns(messages) if m["role"] != "system"
            ],
            "max_tokens": options.max_output_tokens or self.DEFAULT_MAX_TOKENS,
            "stream": True,
            **_sampling(options),
        }
        if system:
            body["system"] = system
        return body

    def feed(self, event: ServerSentEvent, answer: Answer) -> Delta | None:
        obj = _object(event)
        if obj is None:
            return None
        kind = obj.get("type") or event.event
        if kind == "error":
            _, text = error_text(obj)
            raise UpstreamError(f"The upstream stopped with an error: {text or 'no reason given'}")
        if kind == "message_start":
            message = obj.get("message") or {}
            answer.response_id = str(message.get("id") or "")
            answer.model = str(message.get("model") or answer.model)
            if isinstance(message.get("usage"), dict):
                answer.usage = Usage.from_anthropic(message["usage"], None)
        elif kind == "content_block_start":
            # Tool calls are kept like the chat dialect's, keyed by the block's index.
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                answer.tool_calls[obj.get("index", len(answer.tool_calls))] = {
                    "id": str(block.get("id") or ""),
                    "name": str(block.get("name") or ""),
                    "arguments": "",
                }
        elif kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                return Delta(content=str(delta.get("text") or ""))
            if delta.get("type") == "thinking_delta":
                return Delta(reasoning=str(delta.get("thinking") or ""))
            if delta.get("type") == "input_json_delta" and obj.get("index") in answer.tool_calls:
                answer.tool_calls[obj["index"]]["arguments"] += str(delta.get("partial_json") or "")
        elif kind == "message_delta":
            delta = obj.get("delta") or {}
            if delta.get("stop_reason"):
                answer.finish_reason = str(delta["stop_reason"])
            if isinstance(obj.get("usage"), dict):
                answer.usage = Usage.from_anthropic(obj["usage"], answer.usage)
        elif kind == "message_stop":
            raise StreamEnd
        return None


DIALECTS: dict[str, Callable[[], Any]] = {
    "chat_completions": ChatCompletions,
    "responses": Responses,
    "anthropic_messages": AnthropicMessages,
}


# ---------------------------------------------------------------------------
# The client


@dataclass
class Timeouts:
    connect: float = 10.0
    first_token: float = 600.0
    idle: float = 120.0
    total: float = 3600.0


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def shared_client(connect_timeout: float = 10.0) -> httpx.AsyncClient:
    """One AsyncClient per event loop (that is, per process in production)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            # Our own deadlines (first token, idle, total) replace httpx's read timeout.
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0, pool=30.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        _clients[loop] = client
    return client


class Upstream:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        style: str = "chat_completions",
        timeouts: Timeouts | None = None,
        max_retries: int = 2,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        if style not in DIALECTS:
            raise ValueError(f"unknown API style {style!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.dialect = DIALECTS[style]()
        self.timeouts = timeouts or Timeouts()
        self.max_retries = max_retries
        self._client = client
        self._sleep = sleep

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client or shared_client(self.timeouts.connect)

    def headers(self, options: RequestOptions = NO_OPTIONS) -> dict[str, str]:
        headers = {
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
        }
        if self.dialect.name == "anthropic_messages":
            headers["x-api-key"] = self.api_key
            headers["anthropic-version"] = "2023-06-01"
        else:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.dialect.name == "chat_completions" and options.cache_key:
            # xAI routes requests with the same id to the same server, where its cache is.
            headers["x-grok-conv-id"] = options.cache_key
        return headers

    def redact(self, text: str) -> str:
        return redact(text, self.api_key)

    async def stream(
        self,
        answer: Answer,
        model: str,
        messages: list[Turn],
        options: RequestOptions | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """Stream one answer, retrying only while nothing has been relayed yet. `options`
        are sent as given: chat.capabilities.allowed_options() drops what a model refuses."""
        attempt = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total
        while True:
            relayed = False
            try:
                async for delta in self._stream_once(
                    answer, model, messages, options or NO_OPTIONS, deadline
                ):
                    relayed = True
                    yield delta
                return
            except UpstreamError as exc:
                # Its message reaches the user, the database and the logs: never the key,
                # nothing a database cannot save (a raw NUL in an error body's text).
                exc.message = encodable(self.redact(exc.message))
                exc.args = (exc.message,)
                if relayed or not exc.retryable or attempt >= self.max_retries:
                    raise
                attempt += 1
                wait = exc.retry_after if exc.retry_after is not None else 0.5 * 2**attempt
                wait = min(wait, 30.0) + random.uniform(0, 0.1)
                logger.warning(
                    "upstream attempt %d failed (%s); retrying in %.1fs", attempt, exc, wait
                )
                await self._sleep(wait)

    async def _stream_once(
        self,
        answer: Answer,
        model: str,
        messages: list[Turn],
        options: RequestOptions,
        deadline: float,
    ) -> AsyncGenerator[Delta, None]:
        url = self.base_url + self.dialect.path
        body = self.dialect.body(model, messages, options)
        loop = asyncio.get_running_loop()
        got_token = False
        # Each read of the upstream gets its own deadline and none is armed while this
        # generator is parked at `yield`: a timeout around the whole loop would count the
        # consumer's time as upstream silence and, holding the consumer's task, keep an
        # abandoned stream (and its pool connection) alive until a full GC.
        response: httpx.Response | None = None
        events: AsyncGenerator[ServerSentEvent, None] | None = None
        until = min(deadline, loop.time() + self.timeouts.first_token)
        try:
            async with asyncio.timeout_at(until):
                request = self.client.build_request(
                    "POST", url, json=body, headers=self.headers(options)
                )
                response = await self.client.send(request, stream=True)
                await self._check_response(response)
            answer.accepted = True
            # We ask for no compression (it holds events back); httpx decodes it anyway.
            events = EventSource(response).aiter_sse()
            while True:
                async with asyncio.timeout_at(until):
                    event = await anext(events, None)
                if event is None:
                    return
                try:
                    delta = self.dialect.feed(event, answer)
                except StreamEnd:
                    await self._finish_body(response, events, min(deadline, loop.time() + 1.0))
                    return
                if delta is not None:
                    # A tool's status or a citation is no token: the model may think on
                    # in silence after a search, under the first token's deadline.
                    got_token = got_token or bool(delta.content or delta.reasoning)
                    answer.add(delta)
                    yield delta
                # Keepalives and empty deltas still prove the upstream is alive.
                limit = self.timeouts.idle if got_token else self.timeouts.first_token
                until = min(deadline, loop.time() + limit)
        except TimeoutError:
            if loop.time() >= deadline - 0.001:
                raise UpstreamError(
                    f"The answer took longer than the overall limit of "
                    f"{self.timeouts.total:g} s and was cut off."
                ) from None
            if got_token:
                raise UpstreamError(
                    f"The upstream went silent for more than {self.timeouts.idle:g} s "
                    "in the middle of the answer."
                ) from None
            raise UpstreamError(
                f"No answer from the upstream within {self.timeouts.first_token:g} s.",
                retryable=False,
            ) from None
        except httpx.ConnectError as exc:
            logger.warning("upstream connect to %s failed: %s", url, self.redact(str(exc)))
            raise UpstreamError(
                "Could not connect to the upstream API. Check XAI_BASE_URL and the network.",
                retryable=True,
            ) from None
        except httpx.ConnectTimeout:
            raise UpstreamError(
                f"Connecting to the upstream took more than {self.timeouts.connect:g} s.",
                retryable=True,
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            logger.warning("upstream connection to %s broke: %s", url, self.redact(str(exc)))
            raise UpstreamError(
                "The connection to the upstream broke before the answer was complete.",
                retryable=not got_token,
            ) from None
        except httpx.HTTPError as exc:  # pool timeouts, protocol errors, bad URLs
            # A LocalProtocolError quotes the refused header: the key, when it is broken.
            logger.warning("upstream request to %s failed: %s", url, self.redact(repr(exc)))
            raise UpstreamError(
                f"The request to the upstream failed ({type(exc).__name__})."
            ) from None
        finally:
            if events is not None:
                await events.aclose()
            if response is not None:
                await response.aclose()

    @staticmethod
    async def _finish_body(
        response: httpx.Response, events: AsyncGenerator[ServerSentEvent, None], until: float
    ) -> None:
        """Read what follows the stream's end (the HTTP body's last bytes), so that the
        connection goes back to the pool: otherwise every answer opened a new connection,
        a TCP and TLS handshake before its first token. Given up, and the connection
        closed, after 64 KiB or past `until`."""
        limit = response.num_bytes_downloaded + 65536
        try:
            async with asyncio.timeout_at(until):
                while response.num_bytes_downloaded < limit:
                    if await anext(events, None) is None:
                        return
        except (TimeoutError, httpx.HTTPError):
            return  # the answer is complete: a slow or broken tail changes nothing

    async def _check_response(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raw = self.redact((await response.aread()).decode("utf-8", "replace"))
            error = describe_status(response.status_code, raw)
            error.retry_after = parse_retry_after(response.headers.get("retry-after"))
            logger.warning(
                "upstream %s answered %d: %s",
                response.request.url.path,
                response.status_code,
                raw[:500],
            )
            raise error
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            raw = (await response.aread()).decode("utf-8", "replace")
            try:
                body = parse_json(raw)
            except ValueError:
                body = None
            _, text = error_text(body)
            logger.warning(
                "upstream answered 200 with %r: %s", content_type, self.redact(raw)[:500]
            )
            raise UpstreamError(
                self.redact(
                    f"The upstream did not stream an answer: {text}"
                    if text
                    else f"The upstream answered with {content_type or 'no content type'}, "
                    "not an event stream."
                )
            )


@dataclass
class Catalog:
    """What the upstream offers: model ids with their aliases (sorted alphabetically), xAI's
    list prices, each model's `capabilities` object and `input_modalities` list as the list
    gives them (read by chat.capabilities and chat.catalog), and the path it came from
    (`/language-models` or `/models`; "" when none was read)."""

    models: list[str]
    prices: dict[str, Price]
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_modalities: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""


def fetch_catalog(base_url: str, api_key: str, timeout: float = 5.0) -> Catalog:
    """The models the upstream offers, with their aliases and, from xAI, their prices.

    xAI's `/language-models` (key `models`, with aliases, prices, capabilities and input
    modalities) where the server answers it with such a list; else OpenAI's `/models`
    (key `data`, or `models`), which every compatible server offers. A `/language-models`
    that is missing, or answers 200 in another shape (OpenAI's `data`, say), is passed over.
    """
    headers = {"Authorization": f"Bearer {api_key}"}
    base = base_url.rstrip("/")
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            response = client.get(base + "/language-models")
            catalog = _catalog_from(response, ("models",), "/language-models")
            if catalog is not None:
                return catalog
            logger.info(
                "the upstream's /language-models answered %d without a list of models in "
                "xAI's shape: reading /models",
                response.status_code,
            )
            response = client.get(base + "/models")
    except httpx.HTTPError as exc:
        # Its text reaches the admin's page, the command's output and the log: never the key.
        raise UpstreamError(
            redact(f"The request to the upstream failed ({type(exc).__name__}: {exc}).", api_key)
        ) from None
    if response.status_code != 200:
        raise describe_status(response.status_code, redact(response.text, api_key))
    try:
        response.json()
    except ValueError:
        raise UpstreamError("The upstream's model list is not JSON.") from None
    return _catalog_from(response, ("data", "models"), "/models") or Catalog(
        [], {}, source="/models"
    )


def _catalog_from(response: httpx.Response, keys: tuple[str, ...], source: str) -> Catalog | None:
    """The catalog in a 200 answer's first of `keys` that lists a model; None without one."""
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    for key in keys:
        items = body.get(key)
        usable = [
            item
            for item in (items if isinstance(items, list) else ())
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]
        ]
        if usable:
            return _catalog_of(usable, source)
    return None


def _catalog_of(items: list[dict[str, Any]], source: str) -> Catalog:
    ids: set[str] = set()
    prices: dict[str, Price] = {}
    capabilities: dict[str, dict[str, Any]] = {}
    modalities: dict[str, list[str]] = {}
    for item in items:
        names, aliases = [item["id"]], item.get("aliases")
        if isinstance(aliases, list):
            names += [a for a in aliases if isinstance(a, str) and a]
        ids.update(names)
        price = price_from_language_model(item)
        if price is not None:
            prices.update(dict.fromkeys(names, price))
        if isinstance(item.get("capabilities"), dict):
            capabilities.update(dict.fromkeys(names, item["capabilities"]))
        if isinstance(item.get("input_modalities"), list):
            listed = [m for m in item["input_modalities"] if isinstance(m, str)]
            modalities.update(dict.fromkeys(names, listed))
    return Catalog(sorted(ids), prices, capabilities, modalities, source)
