"""Web search and X search (issue 15): the composer's toggles reach the request as xAI's
`tools`, the site's settings restrict or refuse them, tool statuses reach every tab while
the answer streams, and the answer's citations are saved, sent and shown as safe links.

The answers come from the loopback upstream (tests/fake_upstream.py) with the recorded web
search stream (SOURCES.md: grok-4-fast-reasoning, one web_search_call, 5 citations);
hand-built streams follow its event shapes.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.test import Client

from chat.models import Message, SiteSettings
from tests.fake_upstream import FakeUpstream, Reply, transcript
from tests.test_responses_stream import RESPONSE, USAGE, WEB_CALL, X_CALL, x_search_stream

pytestmark = pytest.mark.django_db(transaction=True)

WEB_SEARCH = "vercel-xai-responses-web-search-1.sse"
# SOURCES.md: first .../XAI_%28company%29, then https://x.ai/company; the other three as
# the recording's annotation events give them, in their order.
CITATIONS = [
    "https://en.wikipedia.org/wiki/XAI_%28company%29",
    "https://x.ai/company",
    "https://www.ibm.com/think/topics/explainable-ai",
    "https://www.owkin.com/a-z-of-ai-for-healthcare/xai",
    "https://x.ai/",
]
CALL = "fc_98a8d4aa-fc8b-fd93-e673-d5a8f1c9cee8_0"  # the recording's web_search_call
QUERY = "what is xAI"  # its arguments' query
WAIT = 30  # seconds a frame may take on a loaded machine: a hang guard, not a deadline


@pytest.fixture
def responses(upstream: FakeUpstream, settings) -> FakeUpstream:
    settings.XAI_API_STYLE = "responses"
    upstream.default = Reply(body=transcript(WEB_SEARCH))
    return upstream


def recorded_events() -> list[bytes]:
    body = transcript(WEB_SEARCH)
    return [part + b"\n\n" for part in body.split(b"\n\n") if part.strip()]


def paced_web_search() -> Reply:
    """The recording in three pieces: its start; the web search call (added, then done);
    the answer's text, citations and end. Each after the first waits for next_piece()."""
    events = recorded_events()
    assert b'"web_search_call"' in events[2] and b'"web_search_call"' in events[3]
    return Reply(
        pieces=[b"".join(events[:2]), b"".join(events[2:4]), b"".join(events[4:])], paced=True
    )


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def cited_stream(urls: list[str]) -> Reply:
    """A short answer citing `urls`, shaped like the recording's events."""
    response = {"id": "resp_1", "object": "response", "model": "grok-test", "status": "in_progress"}
    usage = {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}
    annotations = [
        event(
            "response.output_text.annotation.added",
            item_id="msg_1",
            output_index=0,
            content_index=0,
            annotation_index=index,
            annotation={"type": "url_citation", "url": url, "title": f"Title {index}"},
        )
        for index, url in enumerate(urls)
    ]
    return Reply(
        body=b"".join(
            [
                event("response.created", response=response),
                event("response.output_text.delta", item_id="msg_1", output_index=0, delta="See."),
                *annotations,
                event(
                    "response.completed",
                    response={**response, "status": "completed", "usage": usage, "output": []},
                ),
            ]
        )
    )


@database_sync_to_async
def site_settings(**fields: Any) -> None:
    row = SiteSettings.current()
    for name, value in fields.items():
        setattr(row, name, value)
    row.save()


@database_sync_to_async
def saved(message_id: int) -> Message:
    return Message.objects.get(pk=message_id)


@database_sync_to_async
def message_count() -> int:
    return Message.objects.count()


async def ask(socket, **frame: Any) -> tuple[dict, list[dict]]:
    await socket.send(
        type="send", content="What is xAI?", conversation_id=None, model=None, **frame
    )
    return await socket.until("message.end", WAIT)


def tools_sent(upstream: FakeUpstream) -> list[Any]:
    return [request.json().get("tools") for request in upstream.stream_requests()]


# -- the site's settings ---------------------------------------------------------------------

ADMIN_FORM = {
    "default_system_prompt": "",
    "web_search_enabled": "on",
    "web_search_allowed_domains": "",
    "web_search_excluded_domains": "",
    "x_search_enabled": "on",
    "x_search_allowed_handles": "",
    "x_search_excluded_handles": "",
}


@pytest.mark.parametrize(
    ("fields", "field", "error"),
    [
        (
            {"web_search_allowed_domains": "a.com b.com c.com d.com e.com f.com"},
            "web_search_allowed_domains",
            "xAI takes at most 5 domains; 6 given.",
        ),
        (
            {"web_search_excluded_domains": "https://example.com/news"},
            "web_search_excluded_domains",
            "without https:// or a path: not https://example.com/news.",
        ),
        (
            {"web_search_allowed_domains": "x.ai", "web_search_excluded_domains": "y.ai"},
            "web_search_excluded_domains",
            "Set allowed domains or excluded domains, not both",
        ),
        (
            {"x_search_allowed_handles": " ".join(f"h{i}" for i in range(11))},
            "x_search_allowed_handles",
            "xAI takes at most 10 handles; 11 given.",
        ),
        (
            {"x_search_excluded_handles": "@elon.musk"},
            "x_search_excluded_handles",
            "not elon.musk.",
        ),
        (
            {"x_search_allowed_handles": "xai", "x_search_excluded_handles": "grok"},
            "x_search_excluded_handles",
            "Set allowed handles or excluded handles, not both",
        ),
    ],
)
def test_the_admin_form_refuses_filters_xai_would_refuse(client, staff, fields, field, error):
    client.force_login(staff)
    response = client.post("/admin/chat/sitesettings/add/", {**ADMIN_FORM, **fields})

    assert response.status_code == 200  # the form again, with its errors
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field]
    assert error in " ".join(errors[field])
    assert not SiteSettings.objects.exists()


def test_the_admin_form_saves_the_filters_as_xai_takes_them(client, staff):
    client.force_login(staff)
    response = client.post(
        "/admin/chat/sitesettings/add/",
        {
            **ADMIN_FORM,
            "web_search_enabled": "",
            "web_search_excluded_domains": "Spam.example, ads.example.",
            "x_search_allowed_handles": "@xai\n@grok xai",
        },
    )

    assert response.status_code == 302
    site = SiteSettings.current()
    assert site.web_search_excluded_domains == "spam.example\nads.example"
    assert site.x_search_allowed_handles == "xai\ngrok"
    assert not site.web_search_enabled and site.x_search_enabled


# -- the request --------------------------------------------------------------------------


async def test_web_search_toggled_on_sends_the_web_search_tool_and_off_sends_none(
    responses, alice, socket_for
):
    socket = await socket_for(alice)
    await ask(socket, search={"web": True, "x": False})
    await ask(socket, search={"web": False, "x": False})
    await ask(socket)

    assert tools_sent(responses) == [[{"type": "web_search"}], None, None]
    assert [r.path for r in responses.stream_requests()] == ["/v1/responses"] * 3


async def test_x_search_toggled_on_sends_the_x_search_tool_with_the_sites_handles(
    responses, alice, socket_for
):
    await site_settings(x_search_excluded_handles="spam_bot\nother")
    socket = await socket_for(alice)
    await ask(socket, search={"x": True})
    await site_settings(
        x_search_excluded_handles="",
        x_search_allowed_handles="xai",
        web_search_allowed_domains="x.ai\nwikipedia.org",
    )
    await ask(socket, search={"web": True, "x": True})

    assert tools_sent(responses) == [
        [{"type": "x_search", "excluded_x_handles": ["spam_bot", "other"]}],
        [
            {"type": "web_search", "allowed_domains": ["x.ai", "wikipedia.org"]},
            {"type": "x_search", "allowed_x_handles": ["xai"]},
        ],
    ]


async def test_an_edit_and_a_regenerate_carry_their_own_search(responses, alice, socket_for):
    socket = await socket_for(alice)
    end, frames = await ask(socket)
    start = next(f for f in frames if f["type"] == "message.start")
    await socket.send(
        type="edit",
        conversation_id=end["conversation_id"],
        message_id=start["user_message"]["id"],
        content="What is xAI, in short?",
        model=None,
        search={"web": True},
    )
    edited, _ = await socket.until("message.end", WAIT)
    await socket.send(type="regenerate", message_id=edited["message_id"], search={"x": True})
    await socket.until("message.end", WAIT)
    await socket.send(type="regenerate", message_id=edited["message_id"])
    await socket.until("message.end", WAIT)

    assert tools_sent(responses) == [None, [{"type": "web_search"}], [{"type": "x_search"}], None]


@pytest.mark.parametrize(
    ("turned_off", "search", "message"),
    [
        ({"web_search_enabled": False}, {"web": True}, "Web search is turned off"),
        ({"x_search_enabled": False}, {"web": True, "x": True}, "X search is turned off"),
    ],
)
async def test_a_search_an_admin_turned_off_is_refused_and_nothing_is_saved_or_sent(
    responses, alice, socket_for, turned_off, search, message
):
    await site_settings(**turned_off)
    socket = await socket_for(alice)
    await socket.send(
        type="send", content="What is xAI?", conversation_id=None, model=None, search=search
    )
    refused = await socket.receive(WAIT)

    assert refused["type"] == "error" and refused["code"] == "search_unavailable"
    assert refused["message"].startswith(message)
    assert responses.stream_requests() == [] and await message_count() == 0


async def test_search_is_refused_without_the_responses_api(upstream, alice, socket_for):
    socket = await socket_for(alice)  # the upstream fixture's style: chat_completions
    await socket.send(
        type="send", content="Hi", conversation_id=None, model=None, search={"x": True}
    )
    refused = await socket.receive(WAIT)

    assert refused["code"] == "search_unavailable"
    assert refused["message"] == "Web and X search need xAI's Responses API."
    assert upstream.stream_requests() == [] and await message_count() == 0


@pytest.mark.parametrize(
    "search", [True, {"web": "yes"}, {"web": True, "news": True}, ["web"]], ids=repr
)
async def test_a_malformed_search_field_is_a_bad_frame(responses, alice, socket_for, search):
    socket = await socket_for(alice)
    await socket.send(type="send", content="Hi", conversation_id=None, model=None, search=search)
    refused = await socket.receive(WAIT)

    assert refused["code"] == "bad_frame" and "search" in refused["message"]
    assert responses.stream_requests() == []


# -- tool status ----------------------------------------------------------------------------


def tool_frames(frames: list[dict]) -> list[tuple[str, str, str, str]]:
    return [(f["id"], f["kind"], f["state"], f["query"]) for f in frames if f["type"] == "tool"]


async def test_tool_statuses_reach_the_asking_and_a_watching_socket_in_order(
    responses, alice, socket_for
):
    responses.queue(paced_web_search())
    asking, watching = await socket_for(alice), await socket_for(alice)
    await asking.send(
        type="send", content="What is xAI?", conversation_id=None, model=None, search={"web": True}
    )
    start, _ = await asking.until("message.start", WAIT)
    await watching.send(type="watch", conversation_id=start["conversation_id"])
    snapshot, _ = await watching.until("snapshot", WAIT)
    assert snapshot["tools"] == []  # the search has not begun
    responses.next_piece()  # the web search call
    responses.next_piece()  # the answer

    end, asked = await asking.until("message.end", WAIT)
    watched_end, watched = await watching.until("message.end", WAIT)
    expected = [
        (CALL, "web_search", "in_progress", QUERY),
        (CALL, "web_search", "completed", QUERY),
    ]
    assert tool_frames(asked) == expected
    assert tool_frames(watched) == expected
    tool = next(f for f in asked if f["type"] == "tool")
    assert tool == {
        "type": "tool",
        "message_id": end["message_id"],
        "id": CALL,
        "kind": "web_search",
        "state": "in_progress",
        "name": "web_search",
        "query": QUERY,
    }
    # The statuses come before the text that follows the search.
    kinds = [f["type"] for f in asked]
    assert kinds.index("tool") < kinds.index("delta")
    assert watched_end["citations"] == end["citations"]


async def test_a_tab_that_joins_during_the_answer_gets_the_statuses_so_far(
    responses, alice, socket_for
):
    responses.queue(paced_web_search())
    asking = await socket_for(alice)
    await asking.send(
        type="send", content="What is xAI?", conversation_id=None, model=None, search={"web": True}
    )
    start, _ = await asking.until("message.start", WAIT)
    responses.next_piece()  # the web search call, done
    while (await asking.until("tool", WAIT))[0]["state"] != "completed":
        pass

    joining = await socket_for(alice)
    await joining.send(type="watch", conversation_id=start["conversation_id"])
    snapshot, _ = await joining.until("snapshot", WAIT)
    responses.next_piece()
    await joining.until("message.end", WAIT)

    assert snapshot["message_id"] == start["message"]["id"]
    assert snapshot["tools"] == [
        {
            "id": CALL,
            "kind": "web_search",
            "state": "completed",
            "name": "web_search",
            "query": QUERY,
        }
    ]


async def test_each_of_several_tool_calls_in_one_answer_has_its_statuses(
    responses, alice, socket_for
):
    completed = event(
        "response.completed",
        response={**RESPONSE, "status": "completed", "usage": USAGE, "output": []},
    )
    responses.queue(Reply(body=x_search_stream() + completed))
    socket = await socket_for(alice)
    end, frames = await ask(socket, search={"web": True, "x": True})

    assert tool_frames(frames) == [
        (X_CALL, "x_search", "in_progress", ""),
        (X_CALL, "x_search", "searching", "from:xai filter:media"),
        (WEB_CALL, "web_search", "in_progress", ""),
        (WEB_CALL, "web_search", "searching", ""),
        (WEB_CALL, "web_search", "completed", ""),
        (WEB_CALL, "web_search", "completed", "xai news"),
        (X_CALL, "x_search", "completed", "from:xai filter:media"),
    ]
    assert end["citations"] == [
        {"url": "https://x.com/xai/status/1", "title": "1"},
        {"url": "https://x.ai/news"},
    ]


# -- citations ------------------------------------------------------------------------------


async def test_message_end_carries_the_five_citations_in_order_and_they_are_saved(
    responses, alice, socket_for
):
    socket = await socket_for(alice)
    end, _ = await ask(socket, search={"web": True})

    assert end["state"] == "complete"
    assert end["citations"] == [{"url": url} for url in CITATIONS]
    message = await saved(end["message_id"])
    assert message.citations == [{"url": url} for url in CITATIONS]

    # A tab that comes back later learns them from `watching`.
    other = await socket_for(alice)
    await other.send(type="watch", conversation_id=end["conversation_id"])
    watching, _ = await other.until("watching", WAIT)
    [recent] = watching["recent"]
    assert recent["citations"] == end["citations"]


async def test_a_long_answers_replay_carries_its_citations(responses, alice, socket_for):
    socket = await socket_for(alice)
    end, _ = await ask(socket, search={"web": True})
    await database_sync_to_async(Message.objects.filter(pk=end["message_id"]).update)(
        content="x" * 70000
    )
    other = await socket_for(alice)
    await other.send(type="watch", conversation_id=end["conversation_id"])
    watching, frames = await other.until("watching", WAIT)

    assert watching["recent"] == []
    replayed = [f for f in frames if f["type"] == "message.end"]
    assert [c["url"] for c in replayed[0]["citations"]] == CITATIONS


class Sources(HTMLParser):
    """The source chips of a page: each `.source` element's tag and attributes, its text."""

    def __init__(self) -> None:
        super().__init__()
        self.chips: list[dict[str, Any]] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "source" in (attributes.get("class") or "").split():
            self.chips.append({"tag": tag, **attributes, "text": ""})
            self.depth = 1
        elif self.depth and tag == "span":
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag in ("a", "span"):
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.chips[-1]["text"] += data


def chips_of(client: Client, conversation_id: int) -> list[dict[str, Any]]:
    response = client.get(f"/c/{conversation_id}/")
    assert response.status_code == 200
    parser = Sources()
    parser.feed(response.content.decode())
    return parser.chips


async def test_the_page_shows_the_saved_citations_as_numbered_safe_links(
    responses, alice: User, socket_for
):
    socket = await socket_for(alice)
    end, _ = await ask(socket, search={"web": True})
    client = Client()
    await database_sync_to_async(client.force_login)(alice)

    chips = await database_sync_to_async(chips_of)(client, end["conversation_id"])

    assert [chip["href"] for chip in chips] == CITATIONS
    assert [chip["text"] for chip in chips] == [
        "1 en.wikipedia.org",
        "2 x.ai",
        "3 ibm.com",
        "4 owkin.com",
        "5 x.ai",
    ]
    for chip in chips:
        assert chip["tag"] == "a"
        assert chip["target"] == "_blank" and chip["rel"] == "noopener noreferrer"


async def test_a_hostile_citation_url_is_not_rendered_as_a_link(responses, alice, socket_for):
    hostile = [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        " JaVa\tScRiPt:alert(2)",
        'https://ok.example/a"><script>alert(3)</script>',
    ]
    responses.queue(cited_stream(hostile))
    socket = await socket_for(alice)
    end, _ = await ask(socket, search={"web": True})
    assert [c["url"] for c in end["citations"]] == hostile  # as the upstream gave them
    client = Client()
    await database_sync_to_async(client.force_login)(alice)

    chips = await database_sync_to_async(chips_of)(client, end["conversation_id"])
    page = (await database_sync_to_async(client.get)(f"/c/{end['conversation_id']}/")).content

    assert [chip["tag"] for chip in chips] == ["span", "span", "span", "a"]
    assert not any("href" in chip for chip in chips[:3])
    assert chips[3]["href"] == 'https://ok.example/a"><script>alert(3)</script>'
    assert chips[3]["text"] == "4 ok.example"
    assert chips[3]["title"] == "Title 3"
    assert b"<script>alert" not in page and b'href="javascript' not in page.lower()


# -- the composer's toggles -----------------------------------------------------------------


def toggles_of(client: Client) -> dict[str, dict[str, str | None]]:
    """The page's search toggles: each checkbox's attributes, by its data-search."""

    class Toggles(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: dict[str, dict[str, str | None]] = {}
            self.title: str | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            attributes = dict(attrs)
            if tag == "label" and attributes.get("class") == "search-toggle":
                self.title = attributes.get("title")
            elif tag == "input" and attributes.get("data-search"):
                self.found[attributes["data-search"] or ""] = {**attributes, "label": self.title}

    response = client.get("/")
    assert response.status_code == 200
    parser = Toggles()
    parser.feed(response.content.decode())
    return parser.found


def test_the_toggles_are_off_and_usable_with_the_responses_api(client, alice, settings):
    settings.XAI_API_STYLE = "responses"
    client.force_login(alice)
    toggles = toggles_of(client)

    assert list(toggles) == ["web", "x"]
    for toggle in toggles.values():
        assert "checked" not in toggle and "disabled" not in toggle
        assert toggle["label"] is None and "aria-description" not in toggle


def test_the_toggles_say_why_they_are_disabled(client, alice, settings):
    settings.XAI_API_STYLE = "chat_completions"
    client.force_login(alice)
    reason = "Web and X search need xAI's Responses API."
    for toggle in toggles_of(client).values():
        assert "disabled" in toggle
        assert toggle["aria-description"] == toggle["label"] == reason

    settings.XAI_API_STYLE = "responses"
    SiteSettings.objects.create(pk=1, x_search_enabled=False)
    toggles = toggles_of(client)
    assert "disabled" not in toggles["web"]
    assert "disabled" in toggles["x"]
    assert toggles["x"]["aria-description"] == "X search is turned off on this site by an admin."
