"""Reading xAI's Responses API streams: text, reasoning summaries, citations, tool statuses,
output items and usage, through the real HTTP path (tests/fake_upstream.py).

Expected values for the recorded streams come from tests/fixtures/upstream/SOURCES.md
("xAI Responses API") or, where it gives only a count (the citations' URLs, the encrypted
reasoning), from the recording itself read with the standard json module: never from the
code under test. Hand-built streams follow the event shapes of recorded xAI streams
(vercel/ai packages/xai/src/responses/__fixtures__/xai-x-search-tool.chunks.txt) and
the event list of xAI's Responses docs; nothing here reads files outside the repository.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.upstream import Answer, Delta, ToolStatus, Upstream, Usage
from tests.fake_upstream import FakeUpstream, Reply, transcript

MESSAGES = [{"role": "user", "content": "What is xAI?"}]
REASONING = "vercel-xai-responses-reasoning-1.sse"
ENCRYPTED = "vercel-xai-responses-reasoning-encrypted-1.sse"
WEB_SEARCH = "vercel-xai-responses-web-search-1.sse"

# SOURCES.md: 5 distinct citations, first .../XAI_%28company%29, then https://x.ai/company;
# the other three as the recording's annotation events give them, in their order.
WEB_SEARCH_CITATIONS = [
    "https://en.wikipedia.org/wiki/XAI_%28company%29",
    "https://x.ai/company",
    "https://www.ibm.com/think/topics/explainable-ai",
    "https://www.owkin.com/a-z-of-ai-for-healthcare/xai",
    "https://x.ai/",
]
WEB_SEARCH_CALL = "fc_98a8d4aa-fc8b-fd93-e673-d5a8f1c9cee8_0"

EXPECTED: dict[str, dict[str, Any]] = {
    REASONING: {
        "text": {
            "sha": "2a7a28eb233e9174",
            "len": 2849,
            "start": "### Overview of Sonoran Cuisine",
            "end": "ke food trucks in Tucson or markets in Hermosillo.",
        },
        "reasoning": {
            "sha": "88bee32a92a85ee3",
            "len": 766,
            "start": 'First, the question is: "What is specifi',
        },
        "usage": {
            "prompt_tokens": 216,
            "cached_prompt_tokens": 192,
            "completion_tokens": 923 - 323,  # output 923 holds the reasoning
            "reasoning_tokens": 323,
            "total_tokens": 1139,
            "tools_used": 0,
        },
        "items": ["reasoning", "message"],
        "citations": [],
    },
    ENCRYPTED: {
        "text": {
            "sha": "5d8c257390c6c871",
            "len": 2786,
            "end": "desert's bounty for authentic, approachable meals.",
        },
        "reasoning": {"sha": "9a3bf7461267a1f1", "len": 754},
        "usage": {
            "prompt_tokens": 216,
            "cached_prompt_tokens": 192,
            "completion_tokens": 831 - 253,
            "reasoning_tokens": 253,
            "total_tokens": 1047,
            "tools_used": 0,  # (SOURCES.md gives no tool count here; the recording says 0)
        },
        "items": ["reasoning", "message"],
        "citations": [],
    },
    WEB_SEARCH: {
        "text": {
            "sha": "aaedcde3798be165",
            "len": 1228,
            "start": "xAI is an American artificial intelligence company",
            "end": " more details! For the latest updates, check x.ai.",
        },
        "reasoning": {"sha": hashlib.sha256(b"").hexdigest()[:16], "len": 0},
        "usage": {
            "prompt_tokens": 1875,
            "cached_prompt_tokens": 1578,
            "completion_tokens": 695 - 397,
            "reasoning_tokens": 397,
            "total_tokens": 2570,
            "tools_used": 1,
        },
        "items": ["web_search_call", "message"],
        "citations": WEB_SEARCH_CITATIONS,
    },
}


async def read(server: FakeUpstream, reply: Reply) -> tuple[Answer, list[Delta]]:
    """Stream `reply` through Upstream's Responses dialect: the Answer and what was relayed."""
    server.queue(reply)
    answer, deltas = Answer(), []
    async with httpx.AsyncClient() as client:
        upstream = Upstream(server.base_url, "key", "responses", client=client, max_retries=0)
        async for delta in upstream.stream(answer, "grok-test", MESSAGES):
            deltas.append(delta)
    return answer, deltas


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_string(actual: str, expected: dict[str, Any]) -> None:
    assert sha16(actual) == expected["sha"]
    assert len(actual) == expected["len"]
    assert actual.startswith(expected.get("start", ""))
    assert actual.endswith(expected.get("end", ""))


def completed_response(name: str) -> dict[str, Any]:
    """The `response` of the recording's response.completed event, read with json."""
    for line in transcript(name).decode().splitlines():
        if line.startswith("data: ") and '"type":"response.completed"' in line:
            return json.loads(line[len("data: ") :])["response"]
    raise AssertionError(f"{name} has no response.completed")


def check_recording(name: str, answer: Answer, deltas: list[Delta]) -> None:
    expected = EXPECTED[name]
    check_string(answer.content, expected["text"])
    check_string(answer.reasoning, expected["reasoning"])
    assert "".join(d.content for d in deltas) == answer.content
    assert "".join(d.reasoning for d in deltas) == answer.reasoning
    assert answer.finish_reason == "stop"
    assert answer.usage is not None
    for key, value in expected["usage"].items():
        assert getattr(answer.usage, key) == value, key
    assert answer.usage.cost_in_usd_ticks is None  # none of the three recordings has one
    assert answer.usage.tool_usage == {}  # nor server_side_tool_usage_details
    assert [c["url"] for c in answer.citations] == expected["citations"]
    assert [c["url"] for d in deltas for c in d.citations] == expected["citations"]
    assert [item["type"] for item in answer.output_items] == expected["items"]
    assert answer.output_items == completed_response(name)["output"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_it_reads_each_recorded_responses_stream_in_random_pieces(
    server: FakeUpstream, name: str, crlf: bool, seed: int
) -> None:
    random.seed(seed)  # the server cuts its pieces with `random`
    answer, deltas = await read(server, Reply(body=transcript(name), pieces="random", crlf=crlf))
    check_recording(name, answer, deltas)


async def test_it_keeps_the_encrypted_reasoning_item_verbatim_to_send_it_back(
    server: FakeUpstream,
) -> None:
    answer, _ = await read(server, Reply(body=transcript(ENCRYPTED), pieces="random"))

    reasoning, message = answer.output_items
    recorded = completed_response(ENCRYPTED)["output"][0]
    assert reasoning == recorded
    assert reasoning["type"] == "reasoning"
    assert len(reasoning["encrypted_content"]) == 1731  # SOURCES.md
    assert reasoning["encrypted_content"] == recorded["encrypted_content"]
    assert message["type"] == "message"
    assert list(reasoning) == list(recorded)  # its keys in the order they came


async def test_it_reports_the_web_search_call_with_its_query_while_streaming(
    server: FakeUpstream,
) -> None:
    answer, deltas = await read(server, Reply(body=transcript(WEB_SEARCH), pieces="random"))

    statuses = [d.tool for d in deltas if d.tool is not None]
    assert statuses == [
        ToolStatus(WEB_SEARCH_CALL, "web_search", "in_progress", "web_search", "what is xAI"),
        ToolStatus(WEB_SEARCH_CALL, "web_search", "completed", "web_search", "what is xAI"),
    ]
    # Both come before the first text: the page shows the search while the model works.
    first_text = next(i for i, d in enumerate(deltas) if d.content)
    assert all(i < first_text for i, d in enumerate(deltas) if d.tool)
    assert list(answer.tool_calls_seen.values()) == [statuses[-1]]
    assert answer.usage is not None and answer.usage.tools_used == 1


async def test_tool_statuses_and_citations_do_not_count_as_a_first_token(
    server: FakeUpstream,
) -> None:
    answer, deltas = await read(server, Reply(body=transcript(WEB_SEARCH)))
    assert deltas[0].tool is not None and not deltas[0].content
    extras = Answer()
    extras.add(deltas[0])
    extras.add(Delta(citations=[{"url": "https://x.ai/"}]))
    assert extras.first_token_at is None
    extras.add(Delta(content="x"))
    assert extras.first_token_at is not None
    assert answer.first_token_at is not None


# ---------------------------------------------------------------------------
# Any chunking, the same Answer


def summary(answer: Answer) -> dict[str, Any]:
    return {
        "content": answer.content,
        "reasoning": answer.reasoning,
        "citations": answer.citations,
        "all_citations": answer.all_citations,
        "tools": list(answer.tool_calls_seen.values()),
        "items": answer.output_items,
        "usage": answer.usage,
        "finish": answer.finish_reason,
        "id": answer.response_id,
        "model": answer.model,
    }


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(body)})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), crlf=st.booleans())
def test_any_chunking_gives_the_same_answer(
    server: FakeUpstream, name: str, data: st.DataObject, crlf: bool
) -> None:
    body = transcript(name)
    whole, _ = asyncio.run(read(server, Reply(body=body)))
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=200), label="cuts")
    answer, deltas = asyncio.run(read(server, Reply(pieces=split(body, cuts))))
    assert summary(answer) == summary(whole)
    check_recording(name, answer, deltas)


# ---------------------------------------------------------------------------
# Hand-built streams: what the recordings do not show


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


RESPONSE = {"id": "resp_1", "object": "response", "model": "grok-4.3", "status": "in_progress"}
USAGE = {
    "input_tokens": 5467,
    "input_tokens_details": {"cached_tokens": 1152},
    "output_tokens": 593,
    "output_tokens_details": {"reasoning_tokens": 575},
    "total_tokens": 6060,
    "num_sources_used": 0,
    "num_server_side_tools_used": 3,
    "cost_in_usd_ticks": 177640000,
    "server_side_tool_usage_details": {
        "web_search_calls": 1,
        "x_search_calls": 2,
        "code_interpreter_calls": 0,
        "file_search_calls": 0,
        "mcp_calls": 0,
        "document_search_calls": 0,
    },
}


def summary_part(output_index: int, summary_index: int, *deltas: str) -> bytes:
    item_id = f"rs_{output_index}"
    return b"".join(
        event(
            "response.reasoning_summary_text.delta",
            item_id=item_id,
            output_index=output_index,
            summary_index=summary_index,
            delta=text,
        )
        for text in deltas
    )


async def test_it_separates_reasoning_summary_parts_with_a_blank_line(
    server: FakeUpstream,
) -> None:
    body = b"".join(
        [
            event("response.created", response=RESPONSE),
            summary_part(0, 0, "Reading ", "the question."),
            summary_part(0, 1, "", "Planning ", "the answer."),
            summary_part(2, 0, "After the search."),
            event("response.output_text.delta", item_id="msg", output_index=3, delta="Hi"),
            event("response.completed", response={**RESPONSE, "usage": USAGE}),
        ]
    )
    answer, deltas = await read(server, Reply(body=body, pieces="random"))

    assert answer.reasoning == (
        "Reading the question.\n\nPlanning the answer.\n\nAfter the search."
    )
    assert "".join(d.reasoning for d in deltas) == answer.reasoning
    assert answer.content == "Hi"


X_CALL = "ctc_1_xs_call_1"
WEB_CALL = "ws_1_call_2"


def x_search_stream() -> bytes:
    """Shaped like xAI's x_search recording: X tools stream as custom tool calls whose
    input arrives in pieces; web searches as web_search_call items with their own events,
    done out of output order, the query only in the done item's `action`."""
    call, search = X_CALL, WEB_CALL
    query_input = json.dumps({"query": "from:xai filter:media", "limit": 20})
    custom = {"call_id": "xs_call_1", "name": "x_keyword_search", "type": "custom_tool_call"}
    web = {"id": search, "type": "web_search_call"}
    first = {"type": "url_citation", "url": "https://x.com/xai/status/1", "title": "1"}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {
                "type": "output_text",
                "text": "Done.",
                "annotations": [first, {"type": "url_citation", "url": "https://x.ai/news"}],
            }
        ],
    }
    return b"".join(
        [
            event("response.created", response=RESPONSE),
            event(
                "response.output_item.added",
                output_index=0,
                item={**custom, "id": call, "input": "", "status": "in_progress"},
            ),
            event(
                "response.custom_tool_call_input.delta",
                item_id=call,
                output_index=0,
                delta=query_input[:10],
            ),
            event(
                "response.custom_tool_call_input.delta",
                item_id=call,
                output_index=0,
                delta=query_input[10:],
            ),
            event(
                "response.custom_tool_call_input.done",
                item_id=call,
                output_index=0,
                input=query_input,
            ),
            event(
                "response.output_item.added",
                output_index=1,
                item={**web, "status": "in_progress", "action": {"type": "search", "query": ""}},
            ),
            event("response.web_search_call.in_progress", item_id=search, output_index=1),
            event("response.web_search_call.searching", item_id=search, output_index=1),
            event("response.web_search_call.completed", item_id=search, output_index=1),
            event(
                "response.output_item.done",
                output_index=1,
                item={
                    **web,
                    "status": "completed",
                    "action": {"type": "search", "query": "xai news", "sources": []},
                },
            ),
            event(
                "response.output_item.done",
                output_index=0,
                item={**custom, "id": call, "input": query_input, "status": "completed"},
            ),
            event("response.output_item.added", output_index=2, item={**message, "content": []}),
            event("response.output_text.delta", item_id="msg_1", output_index=2, delta="Done."),
            event(
                "response.output_text.annotation.added",
                item_id="msg_1",
                output_index=2,
                annotation_index=0,
                annotation=first,
            ),
            event(
                "response.output_text.annotation.added",
                item_id="msg_1",
                output_index=2,
                annotation_index=1,
                annotation={"type": "url_citation", "url": "https://x.com/xai/status/1"},
            ),
            event("response.output_item.done", output_index=2, item=message),
        ]
    )


async def test_it_reports_x_and_web_search_calls_in_order_with_their_queries(
    server: FakeUpstream,
) -> None:
    # A late progress event (as an upstream could send it) does not revive a done call.
    late = event("response.web_search_call.searching", item_id=WEB_CALL, output_index=1)
    body = (
        x_search_stream()
        + late
        + event(
            "response.completed",
            response={**RESPONSE, "status": "completed", "usage": USAGE, "output": []},
        )
    )
    answer, deltas = await read(server, Reply(body=body, pieces="random", crlf=True))

    x = (X_CALL, "x_search")
    web = (WEB_CALL, "web_search")
    assert [d.tool for d in deltas if d.tool] == [
        ToolStatus(*x, "in_progress", "x_keyword_search", ""),
        ToolStatus(*x, "searching", "x_keyword_search", "from:xai filter:media"),
        ToolStatus(*web, "in_progress", "", ""),
        ToolStatus(*web, "searching", "", ""),
        ToolStatus(*web, "completed", "", ""),
        ToolStatus(*web, "completed", "", "xai news"),
        ToolStatus(*x, "completed", "x_keyword_search", "from:xai filter:media"),
    ]
    assert [s.state for s in answer.tool_calls_seen.values()] == ["completed", "completed"]
    # One per URL, in order of first appearance; the done message adds the one not seen.
    citations = [{"url": "https://x.com/xai/status/1", "title": "1"}, {"url": "https://x.ai/news"}]
    assert answer.citations == citations
    assert [c for d in deltas for c in d.citations] == citations
    # No final output was given (an empty list): the done items, in output order.
    assert [item["id"] for item in answer.output_items] == [X_CALL, WEB_CALL, "msg_1"]
    assert answer.usage is not None
    assert answer.usage.tools_used == 3
    assert answer.usage.cost_in_usd_ticks == 177640000
    assert answer.usage.tool_usage == USAGE["server_side_tool_usage_details"]


async def test_it_keeps_the_done_items_when_the_stream_breaks_before_completion(
    server: FakeUpstream,
) -> None:
    answer = Answer()
    async with httpx.AsyncClient() as client:
        upstream = Upstream(server.base_url, "key", "responses", client=client, max_retries=0)
        server.queue(Reply(body=x_search_stream(), end="drop"))
        with pytest.raises(Exception, match="connection to the upstream broke"):
            async for _ in upstream.stream(answer, "grok-test", MESSAGES):
                pass

    assert [item["type"] for item in answer.output_items] == [
        "custom_tool_call",
        "web_search_call",
        "message",
    ]
    assert answer.output_items[0]["input"] == json.dumps(
        {"query": "from:xai filter:media", "limit": 20}
    )
    assert answer.content == "Done."


async def test_it_keeps_the_final_output_and_the_responses_own_citations_list(
    server: FakeUpstream,
) -> None:
    final = [
        {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "abc=="},
        {"id": "msg_1", "type": "message", "role": "assistant", "content": []},
    ]
    body = b"".join(
        [
            event("response.created", response=RESPONSE),
            event("response.output_item.done", output_index=0, item={"id": "other"}),
            event("response.output_text.delta", item_id="msg_1", output_index=1, delta="Hi"),
            event(
                "response.incomplete",
                response={
                    **RESPONSE,
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"},
                    "output": final,
                    "usage": USAGE,
                    "citations": ["https://x.ai/", "https://x.ai/news", "https://x.ai/"],
                },
            ),
        ]
    )
    answer, _ = await read(server, Reply(body=body, pieces="random"))

    assert answer.output_items == final
    assert answer.all_citations == ["https://x.ai/", "https://x.ai/news"]
    assert answer.citations == []  # cited inline: none
    assert answer.finish_reason == "max_output_tokens"


def test_usage_from_responses_exposes_the_server_side_tool_counts() -> None:
    usage = Usage.from_responses(USAGE)
    assert usage.tools_used == 3
    assert usage.tool_usage == {
        "web_search_calls": 1,
        "x_search_calls": 2,
        "code_interpreter_calls": 0,
        "file_search_calls": 0,
        "mcp_calls": 0,
        "document_search_calls": 0,
    }
    assert usage.cost_in_usd_ticks == 177640000
    assert (usage.prompt_tokens, usage.cached_prompt_tokens) == (5467, 1152)
    odd = Usage.from_responses(
        {"server_side_tool_usage_details": {"web_search_calls": -1, "x": "2", "y": True}}
    )
    assert (odd.tools_used, odd.tool_usage) == (0, {})
