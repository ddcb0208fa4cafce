// Browser side of the chat: websocket protocol (docs/protocol.md) and safe markdown rendering.
// Vendored UMD globals: markdownit, DOMPurify, hljs.

const chatEl = document.getElementById("chat");
const messagesEl = document.getElementById("messages");
const conversationList = document.getElementById("conversation-list");
const conversationActions = document.getElementById("conversation-actions");
const composer = document.getElementById("composer");
const promptEl = document.getElementById("prompt");
const modelPicker = document.getElementById("model-picker");
const sendButton = document.getElementById("send-button");
// Why nothing can be sent from this page (no API key), said next to Send; "" when it can.
const sendBlockedReason = sendButton.dataset.blockedReason || "";
const stopButton = document.getElementById("stop-button");
const noticeEl = document.getElementById("notice");
const noticeText = noticeEl.querySelector(".notice-text");
const noticeDismiss = noticeEl.querySelector(".notice-dismiss");
const connectionStatus = document.getElementById("connection-status");
const loggedOutEl = document.getElementById("logged-out");
const assistantTemplate = document.getElementById("assistant-message-template");
const userTemplate = document.getElementById("user-message-template");
const sidebar = document.getElementById("sidebar");
const sidebarToggle = document.getElementById("sidebar-toggle");
const sidebarBackdrop = document.getElementById("sidebar-backdrop");
// the sidebar's search (issue 16)
const conversationSearch = document.getElementById("conversation-search");
const searchResults = document.getElementById("search-results");

const SOCKET_URL = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws/chat/`;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;
const PING_INTERVAL_MS = 25000;
// The server closes a socket that leaves more than CHAT_SOCKET_BUFFER_BYTES of its frames
// unacknowledged, rather than buffer them for a reader that is gone or stuck.
const ACK_EVERY_CHARS = 65536;
const STATE_LABELS = {
  streaming: "streaming…",
  stopped: "stopped",
  error: "error",
  interrupted: "interrupted",
};
const SAFE_LINK_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const SAFE_IMAGE_PROTOCOLS = new Set(["http:", "https:"]);

let currentConversationId = toId(messagesEl.dataset.conversationId);
let socket = null;
let retryDelay = RETRY_MIN_MS;
let pingTimer = null;
let received = 0; // characters of the frames this socket has received (docs/protocol.md, `ack`)
let acknowledged = 0;
// {frame, content} from a request that starts an answer (send, edit, regenerate, continue)
// until its message.start or an error; kept across a reconnect, which sends the frame again
// with the same client_id (docs/protocol.md, "Sending again"). `content`: the composer's
// text for a send, else null.
let pending = null;
const entries = new Map(); // message id -> {article, content, reasoning, ...}
// Answers on a branch this page does not show (they may still stream): their frames are
// ignored. Ids of unknown answers wait in `unknownIds` for the page to load the path again.
const offPathIds = new Set();
const unknownIds = new Set();
let refreshing = null;
const dirtyIds = new Set();
let frameRequested = false;

// ---------------------------------------------------------------- markdown

const md = window.markdownit({ html: false, linkify: true, typographer: false, highlight: highlightCode });
md.core.ruler.push("table_align_classes", alignCellsWithClasses);

const PURIFY_CONFIG = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
  FORBID_ATTR: ["style"],
};

DOMPurify.addHook("afterSanitizeAttributes", restrictUrls);

function highlightCode(code, lang) {
  if (lang && hljs.getLanguage(lang)) {
    try {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    } catch {
      // fall through: markdown-it escapes the code itself
    }
  }
  return "";
}

// GFM tables put alignment in style="text-align:…"; styles are forbidden, so use classes.
function alignCellsWithClasses(state) {
  for (const token of state.tokens) {
    if (token.type !== "th_open" && token.type !== "td_open") continue;
    const style = token.attrGet("style");
    if (!style) continue;
    token.attrs = token.attrs.filter(([name]) => name !== "style");
    const match = /text-align:\s*(left|right|center)/.exec(style);
    if (match) token.attrJoin("class", `align-${match[1]}`);
  }
}

function urlProtocol(value) {
  try {
    return new URL(value.trim(), location.href).protocol;
  } catch {
    return null;
  }
}

function restrictUrls(node) {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    if (SAFE_LINK_PROTOCOLS.has(urlProtocol(node.getAttribute("href")))) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    } else {
      node.removeAttribute("href");
    }
  }
  if (node.tagName === "IMG" && node.hasAttribute("src")) {
    if (!SAFE_IMAGE_PROTOCOLS.has(urlProtocol(node.getAttribute("src")))) node.removeAttribute("src");
  }
}

function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(md.render(text).trim(), PURIFY_CONFIG);
  decorateCodeBlocks(target);
}

function decorateCodeBlocks(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    if (code) code.classList.add("hljs");
    const wrapper = document.createElement("div");
    wrapper.className = "code-block";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-button";
    button.textContent = "Copy";
    pre.replaceWith(wrapper);
    wrapper.append(button, pre);
  }
}

async function copyCode(button) {
  const pre = button.parentElement.querySelector("pre");
  if (!pre) return;
  try {
    await navigator.clipboard.writeText(pre.textContent);
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  } catch {
    // clipboard unavailable (insecure context, permission): stay silent
  }
}

// ---------------------------------------------------------------- messages

function toId(value) {
  if (value === undefined || value === null || value === "") return null;
  const number = Number(value);
  return Number.isInteger(number) ? number : null;
}

function toNumber(value) {
  if (value === undefined || value === null || value === "") return null;
  const number = Number(value);
  return Number.isFinite(number) ? number : null;
}

// A rendered answer's usage: the same object as message.end's `usage` (chat/frames.py).
function usageFromDataset(data) {
  if (!data.usage) return null;
  try {
    return JSON.parse(data.usage);
  } catch {
    return null;
  }
}

// Dollars with cents, and the digits a fraction of a cent needs.
function formatUsd(value) {
  const [whole, fraction = ""] = String(value).split(".");
  return `$${whole}.${fraction.replace(/0+$/, "").padEnd(2, "0")}`;
}

// The token counters the meta line lists, in the server's order and words (the page's
// #token-counters, from chat.billing.TOKEN_COUNTERS), then the tool calls (TOOL_COUNTERS:
// "2 web searches"; the last, `rest`, counts the calls of the kinds not listed before it).
const tokenCounters = JSON.parse(document.getElementById("token-counters")?.textContent ?? "[]");

function counterParts(usage) {
  const parts = [];
  let toolCalls = 0;
  for (const { field, label, one, many, rest } of tokenCounters) {
    const count = (usage[field] || 0) - (rest ? toolCalls : 0);
    if (count <= 0) continue;
    if (!one) {
      parts.push(`${count} ${label.toLowerCase()}`);
      continue;
    }
    const other = rest && toolCalls ? "other " : "";
    parts.push(`${count} ${other}${count === 1 ? one : many}`);
    toolCalls += count;
  }
  return parts;
}

function formatMeta(entry) {
  const parts = [];
  if (entry.model) parts.push(entry.model);
  const usage = entry.usage;
  if (usage) {
    parts.push(...counterParts(usage));
    if (usage.source === "estimated") parts.push("estimated: the answer ended before the provider reported usage");
    if (usage.cost_usd) parts.push(formatUsd(usage.cost_usd));
  }
  if (entry.ttftMs !== null && entry.ttftMs !== undefined) parts.push(`first token ${entry.ttftMs} ms`);
  return parts.join(" · ");
}

function formatDuration(entry) {
  const bits = [];
  if (entry.durationMs !== null && entry.durationMs !== undefined) {
    bits.push(`took ${(entry.durationMs / 1000).toFixed(1)} s`);
  }
  if (entry.finishReason) bits.push(`finish reason: ${entry.finishReason}`);
  return bits.join(", ");
}

// The markup is templates/chat/_message.html, which the page also renders stored messages with.
function cloneMessage(template, id) {
  const article = document.importNode(template.content.querySelector("article.message"), true);
  article.dataset.messageId = String(id);
  return article;
}

function buildAssistantArticle(id) {
  return cloneMessage(assistantTemplate, id);
}

function buildUserArticle(id, text, attachments = []) {
  const article = cloneMessage(userTemplate, id);
  article.querySelector(".content").textContent = text;
  showAttachments(article, attachments);
  return article;
}

function findArticle(id) {
  return messagesEl.querySelector(`article.message[data-message-id="${CSS.escape(String(id))}"]`);
}

function appendArticle(article) {
  document.getElementById("empty-state")?.remove();
  messagesEl.append(article);
}

function newEntry(article) {
  return {
    article,
    content: "",
    reasoning: "",
    state: "streaming",
    error: "",
    model: "",
    finishReason: "",
    ttftMs: null,
    durationMs: null,
    usage: null,
    tools: new Map(), // tool call id -> its status, while the answer streams ("web and X search")
    citations: null, // its sources once it ended; null: as the server rendered them
  };
}

function entryFor(id, create = true) {
  let entry = entries.get(id);
  if (entry || !create) return entry || null;
  let article = findArticle(id);
  if (!article) {
    article = buildAssistantArticle(id);
    appendArticle(article);
  }
  entry = newEntry(article);
  entries.set(id, entry);
  return entry;
}

function hydrateArticle(article) {
  const id = toId(article.dataset.messageId);
  if (id !== null && article.dataset.role === "user") renderBranches(article);
  if (id === null || article.dataset.role !== "assistant") return;
  const data = article.dataset;
  const entry = newEntry(article);
  const raw = article.querySelector(".raw");
  entry.content = raw ? raw.textContent : "";
  raw?.remove();
  entry.reasoning = article.querySelector(".reasoning-text")?.textContent || "";
  entry.state = data.state || "complete";
  entry.error = article.querySelector(".error")?.textContent || "";
  entry.model = data.model || "";
  entry.finishReason = data.finishReason || "";
  entry.ttftMs = toNumber(data.ttftMs);
  entry.durationMs = toNumber(data.durationMs);
  entry.usage = usageFromDataset(data);
  entries.set(id, entry);
  renderEntry(entry);
}

function renderEntry(entry) {
  const article = entry.article;
  article.dataset.state = entry.state;
  const stateEl = article.querySelector(".state");
  stateEl.textContent = STATE_LABELS[entry.state] || entry.state;
  stateEl.hidden = entry.state === "complete";
  const reasoning = article.querySelector(".reasoning");
  reasoning.hidden = !entry.reasoning;
  const reasoningText = reasoning.querySelector(".reasoning-text");
  if (reasoningText.textContent !== entry.reasoning) reasoningText.textContent = entry.reasoning;
  renderAnswerText(article.querySelector(".content"), entry);
  const error = article.querySelector(".error");
  const showError = Boolean(entry.error) || entry.state === "error";
  error.hidden = !showError;
  error.textContent = showError ? entry.error || "The answer failed." : "";
  const meta = article.querySelector(".meta");
  meta.textContent = entry.state === "streaming" ? "" : formatMeta(entry);
  meta.title = entry.state === "streaming" ? "" : formatDuration(entry);
  meta.hidden = !meta.textContent;
  renderToolCalls(entry);
  renderSources(entry);
  renderAnswerActions(entry);
}

// What an ended answer offers: Copy; Regenerate, or Retry when it failed or was cut short;
// Continue when it was cut (docs/protocol.md, `regenerate` and `continue`).
function renderAnswerActions(entry) {
  const article = entry.article;
  const ended = entry.state !== "streaming" && toId(article.dataset.messageId) !== null;
  const cut = ["stopped", "interrupted", "error"].includes(entry.state) || entry.finishReason === "length";
  article.querySelector(".copy-answer").hidden = !ended || !entry.content;
  const again = article.querySelector(".regenerate");
  again.hidden = !ended;
  again.textContent = ["error", "stopped", "interrupted"].includes(entry.state) ? "Retry" : "Regenerate";
  article.querySelector(".continue").hidden = !ended || !cut || !entry.content;
  renderBranches(article);
}

// `‹ 2 / 3 ›` on a message that has other versions (its data-siblings, ids oldest first).
function renderBranches(article) {
  const ids = siblingsOf(article);
  const box = article.querySelector(".branches");
  box.hidden = ids.length < 2;
  if (box.hidden) return;
  const index = ids.indexOf(toId(article.dataset.messageId));
  box.querySelector(".branch-count").textContent = `${index + 1} / ${ids.length}`;
  box.querySelector(".branch-prev").disabled = index <= 0;
  box.querySelector(".branch-next").disabled = index >= ids.length - 1;
}

function siblingsOf(article) {
  try {
    const ids = JSON.parse(article.dataset.siblings || "[]");
    return Array.isArray(ids) ? ids.filter(Number.isInteger) : [];
  } catch {
    return [];
  }
}

function isNearBottom() {
  return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 120;
}

function scrollToBottom() {
  messagesEl.scrollTop = messagesEl.scrollHeight;
}

function scheduleRender(id) {
  dirtyIds.add(id);
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(flushRenders);
}

function flushRenders() {
  const started = performance.now();
  frameRequested = false;
  const follow = isNearBottom();
  for (const id of dirtyIds) {
    const entry = entries.get(id);
    if (entry) renderEntry(entry);
  }
  dirtyIds.clear();
  if (follow) scrollToBottom();
  noteFrame(started);
}

function renderNow(entry, id) {
  const follow = isNearBottom();
  dirtyIds.delete(id);
  renderEntry(entry);
  if (follow) scrollToBottom();
}

function streamingIds() {
  return [...entries].filter(([, entry]) => entry.state === "streaming").map(([id]) => id);
}

function updateStopButton() {
  stopButton.hidden = streamingIds().length === 0;
}

function updateSendButton() {
  sendButton.disabled =
    sendBlockedReason !== "" || !promptEl.value.trim() || pending !== null || jumping !== null || uploadsInFlight();
}

// ---------------------------------------------------------------- sidebar

function urlFor(kind, id) {
  return chatEl.dataset[`${kind}Url`].replace(chatEl.dataset.urlPlaceholder, String(id));
}

function markCurrentConversation(id) {
  for (const link of conversationList.querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
  const item = conversationList.querySelector(`li[data-conversation-id="${CSS.escape(String(id))}"]`);
  item?.querySelector("a")?.setAttribute("aria-current", "page");
}

function addConversationToSidebar(conversation) {
  let item = conversationList.querySelector(`li[data-conversation-id="${CSS.escape(String(conversation.id))}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.conversationId = String(conversation.id);
    const link = document.createElement("a");
    link.href = urlFor("conversation", conversation.id);
    item.append(link);
  }
  item.querySelector("a").textContent = conversation.title;
  todayGroupList().prepend(item);
  removeEmptyGroups();
  markCurrentConversation(conversation.id);
}

// A conversation's new title (generated, or renamed in another tab): its sidebar entry and,
// if it is open here, the page's title and the rename field, unless the user is typing in it.
function showConversationTitle(id, title) {
  const item = conversationList.querySelector(`li[data-conversation-id="${CSS.escape(String(id))}"]`);
  const link = item?.querySelector("a");
  if (link) link.textContent = title;
  if (id !== currentConversationId) return;
  document.title = `${title} · Grok Chat`;
  const input = document.getElementById("rename-input");
  if (input && document.activeElement !== input) {
    input.value = title;
    input.setAttribute("value", title);
  }
}

function moveConversationToTop(id) {
  const item = conversationList.querySelector(`li[data-conversation-id="${CSS.escape(String(id))}"]`);
  if (!item && id === currentConversationId) {
    // Open from a later page of the sidebar, not loaded here yet: shown at the top now.
    const title = document.getElementById("rename-input")?.value || document.title.replace(/ · Grok Chat$/, "");
    addConversationToSidebar({ id, title });
    return;
  }
  const today = todayGroupList();
  if (item && item !== today.firstElementChild) {
    today.prepend(item);
    removeEmptyGroups();
  }
}

function csrfToken() {
  return document.querySelector("input[name=csrfmiddlewaretoken]")?.value || "";
}

function showConversationActions(conversation) {
  conversationActions.replaceChildren();
  const form = document.createElement("form");
  form.id = "rename-form";
  form.className = "rename-form";
  form.method = "post";
  form.action = urlFor("rename", conversation.id);
  const csrf = document.createElement("input");
  csrf.type = "hidden";
  csrf.name = "csrfmiddlewaretoken";
  csrf.value = csrfToken();
  const input = document.createElement("input");
  input.id = "rename-input";
  input.name = "title";
  input.setAttribute("value", conversation.title);
  input.maxLength = 200;
  input.required = true;
  input.setAttribute("aria-label", "Conversation title");
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = "Rename";
  form.append(csrf, input, button);
  const del = document.createElement("a");
  del.id = "delete-link";
  del.className = "delete-link";
  del.href = urlFor("delete", conversation.id);
  del.textContent = "Delete";
  conversationActions.append(form, del, exportLinks(conversation));
}

// ---------------------------------------------------------------- notices

function showNotice(text) {
  noticeText.textContent = text;
  noticeEl.hidden = false;
}

function hideNotice() {
  noticeEl.hidden = true;
  noticeText.textContent = "";
}

// What the composer bar says of the socket; its data-state is one of the keys of CONNECTION_TEXT.
const CONNECTION_TEXT = {
  connecting: () => "Connecting…",
  connected: () => "Connected",
  reconnecting: () => `Connection lost. Reconnecting in ${(retryDelay / 1000).toFixed(1)} s…`,
};

function setConnectionStatus(state) {
  connectionStatus.dataset.state = state;
  connectionStatus.textContent = CONNECTION_TEXT[state]();
}

// ---------------------------------------------------------------- socket

function socketIsOpen() {
  return socket !== null && socket.readyState === WebSocket.OPEN;
}

function sendFrame(frame) {
  if (!socketIsOpen()) return false;
  socket.send(JSON.stringify(frame));
  return true;
}

function watchCurrentConversation() {
  if (currentConversationId === null) return;
  sendFrame({ type: "watch", conversation_id: currentConversationId });
}

// crypto.randomUUID() needs a secure context; a self-hosted site on plain http has only this.
function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function sendPending() {
  sendFrame(pending.frame);
}

// Send a frame that starts an answer, with its own client_id; false if one is on its way.
function requestAnswer(frame, content = null) {
  if (pending !== null || sendBlockedReason !== "") return false; // no key: said by Send already
  if (!socketIsOpen()) {
    showNotice("Not connected to the server yet. Your message is kept; try again in a moment.");
    return false;
  }
  pending = { frame: { ...withSearch(frame), client_id: newClientId() }, content };
  sendPending();
  updateSendButton();
  return true;
}

const CLOSE_LOGGED_OUT = 4401;

function connect() {
  if (loggedOut) return; // see "session"
  received = 0;
  acknowledged = 0;
  socket = new WebSocket(SOCKET_URL);
  socket.addEventListener("open", onSocketOpen);
  socket.addEventListener("message", onSocketMessage);
  socket.addEventListener("close", onSocketClose);
}

function onSocketOpen() {
  retryDelay = RETRY_MIN_MS;
  setConnectionStatus("connected");
  watchCurrentConversation();
  // The server may have taken it before the socket went: the same id gets that answer.
  if (pending !== null) sendPending();
  clearInterval(pingTimer);
  pingTimer = setInterval(() => sendFrame({ type: "ping" }), PING_INTERVAL_MS);
}

function onSocketClose(event) {
  clearInterval(pingTimer);
  if (event.code === CLOSE_LOGGED_OUT || loggedOut) {
    // Logged out (here or in another tab): reconnecting would only be refused again. A send
    // without message.start may or may not have been taken; its text is kept as a draft.
    pending = null;
    showLoggedOut();
    return;
  }
  setConnectionStatus("reconnecting");
  setTimeout(connect, retryDelay);
  retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
}

function acknowledge(data) {
  received += data.length;
  if (received - acknowledged < ACK_EVERY_CHARS) return;
  acknowledged = received;
  sendFrame({ type: "ack", received });
}

function onSocketMessage(event) {
  // Acknowledged as it arrives, before the work of showing it. A page too busy to read its
  // frames is closed (4408), then reconnects and reloads its answers as after any lost socket.
  acknowledge(event.data);
  let frame;
  try {
    frame = JSON.parse(event.data);
  } catch {
    return;
  }
  const handler = FRAME_HANDLERS[frame && frame.type];
  if (handler) handler(frame);
}

function onConversation(frame) {
  const conversation = frame.conversation;
  currentConversationId = conversation.id;
  messagesEl.dataset.conversationId = String(conversation.id);
  history.replaceState(null, "", urlFor("conversation", conversation.id));
  document.title = `${conversation.title} · Grok Chat`;
  addConversationToSidebar(conversation);
  showConversationActions(conversation);
}

function onMessageStart(frame) {
  if (frame.conversation_id !== currentConversationId) return;
  if (pending !== null && frame.client_id === pending.frame.client_id) {
    // Taken: the composer empties, unless its text was changed meanwhile.
    if (pending.content !== null && promptEl.value === pending.content) promptEl.value = "";
    clearSentAttachments(pending.frame.attachments || []);
    pending = null;
    updateSendButton();
  }
  if (!showNewBranch(frame)) {
    refreshMessages(); // this tab showed another part of the conversation: show the new one
    return;
  }
  if (frame.history_dropped > 0) {
    const count = frame.history_dropped;
    showNotice(`The ${count} oldest message${count === 1 ? " was" : "s were"} left out so the conversation fits the model's context window.`);
  }
  const answer = frame.message;
  const entry = entryFor(answer.id);
  entry.state = "streaming";
  entry.model = answer.model || entry.model;
  if (answer.content && !entry.content) entry.content = answer.content; // a continued answer
  entry.article.dataset.siblings = JSON.stringify(answer.siblings || []);
  renderNow(entry, answer.id);
  scrollToBottom();
  updateStopButton();
  announceStart(); // see "announcements"
}

// The entry of an answer a frame is about; null for an answer this page does not show
// (another branch, or one that started before this page could hear of it: the page loads
// the active path again, which shows it if it is on it).
function entryOnPage(id) {
  const entry = entries.get(id);
  if (entry) return entry;
  if (offPathIds.has(id)) return null;
  if (findArticle(id)) return entryFor(id);
  unknownIds.add(id);
  refreshMessages();
  return null;
}

function onDelta(frame) {
  if (currentConversationId === null) return;
  const entry = entryOnPage(frame.message_id);
  if (!entry || entry.state !== "streaming") return; // a late frame after message.end
  entry.content += frame.content || "";
  entry.reasoning += frame.reasoning || "";
  scheduleRender(frame.message_id);
  updateStopButton();
}

function onMessageEnd(frame) {
  moveConversationToTop(frame.conversation_id);
  if (frame.conversation_id !== currentConversationId) return;
  const entry = entryOnPage(frame.message_id);
  if (!entry) return;
  entry.state = frame.state;
  entry.error = frame.error || "";
  entry.model = frame.model || entry.model;
  entry.finishReason = frame.finish_reason || "";
  entry.ttftMs = frame.ttft_ms ?? null;
  entry.durationMs = frame.duration_ms ?? null;
  entry.usage = frame.usage || null;
  entry.citations = Array.isArray(frame.citations) ? frame.citations : [];
  entry.tools.clear();
  renderNow(entry, frame.message_id);
  updateStopButton();
  announceEnd(entry);
}

// Show a message.start's messages as the end of the active path: the user's message after
// the message it follows (what came after it there is another branch now), then its answer.
// False if this page does not show the message the new one follows.
function showNewBranch(frame) {
  const user = frame.user_message;
  let userArticle = findArticle(user.id);
  if (!userArticle) {
    const parent = user.parent_id === null ? null : findArticle(user.parent_id);
    if (user.parent_id !== null && !parent) return false;
    removeArticlesAfter(parent);
    userArticle = buildUserArticle(user.id, user.content, user.attachments || []);
    appendArticle(userArticle);
  } else {
    removeArticlesAfter(userArticle);
  }
  userArticle.dataset.siblings = JSON.stringify(user.siblings || []);
  renderBranches(userArticle);
  return true;
}

// Remove the articles after `article` (all of them when null), with their entries.
function removeArticlesAfter(article) {
  for (const other of [...messagesEl.querySelectorAll("article.message")]) {
    if (article && !(article.compareDocumentPosition(other) & Node.DOCUMENT_POSITION_FOLLOWING)) continue;
    const id = toId(other.dataset.messageId);
    entries.delete(id);
    offPathIds.add(id);
    other.remove();
  }
}

// Show the conversation's active path again, as the server renders it (after a branch
// switch, or a frame about an answer this page does not show). One load at a time.
function refreshMessages() {
  refreshing ??= loadMessages().finally(() => { refreshing = null; });
  return refreshing;
}

async function loadMessages() {
  const conversationId = currentConversationId;
  if (conversationId === null) return;
  const asked = [...unknownIds];
  let response;
  try {
    response = await fetch(urlFor("messages", conversationId), { credentials: "same-origin" });
  } catch {
    showNotice("Could not load the conversation. Reload the page to see it.");
    return;
  }
  if (redirectedToLogin(response)) return showLoggedOut();
  if (!response.ok || conversationId !== currentConversationId) return;
  const focusedId = focusedMessageId(); // see "announcements"
  // Our own template's output, every text in it escaped: as the page itself was rendered.
  messagesEl.innerHTML = await response.text();
  entries.clear();
  dirtyIds.clear();
  for (const article of messagesEl.querySelectorAll("article.message")) {
    hydrateArticle(article);
    offPathIds.delete(toId(article.dataset.messageId));
  }
  // Answers that were unknown and are still not shown are on another branch.
  for (const id of asked) {
    unknownIds.delete(id);
    if (!findArticle(id)) offPathIds.add(id);
  }
  updateStopButton();
  scrollToBottom();
  restoreMessageFocus(focusedId); // after the scroll: a focused message above is scrolled back into view
  watchCurrentConversation(); // the answers streaming on this path send their text so far
}

function onBranch(frame) {
  if (frame.conversation_id === currentConversationId) refreshMessages();
}

function onConversationTitle(frame) {
  showConversationTitle(frame.conversation_id, frame.title);
}

function onWatching(frame) {
  if (frame.conversation_id !== currentConversationId) return;
  // Answers that ended while this tab was not listening: show how they ended.
  for (const answer of frame.recent || []) {
    const entry = entryFor(answer.message_id, false);
    if (!entry || entry.state !== "streaming") continue;
    entry.content = answer.content || "";
    entry.reasoning = answer.reasoning || "";
    onMessageEnd({ ...answer, type: "message.end" });
  }
  updateStopButton();
}

function onSnapshot(frame) {
  if (frame.conversation_id !== currentConversationId) return;
  const entry = entryOnPage(frame.message_id);
  if (!entry) return;
  entry.state = "streaming";
  entry.content = frame.content || "";
  entry.reasoning = frame.reasoning || "";
  entry.tools.clear();
  for (const status of frame.tools || []) mergeToolStatus(entry, status);
  renderNow(entry, frame.message_id);
  updateStopButton();
}

function onError(frame) {
  if (frame.code === "logged_out") return; // the close (4401) that follows says it: showLoggedOut
  showNotice(frame.message || frame.code || "Something went wrong.");
  if (pending !== null && (frame.message_id === undefined || frame.message_id === null || pending.frame.type !== "send")) {
    if (pending.content !== null && !promptEl.value.trim()) promptEl.value = pending.content;
    pending = null;
  }
  updateSendButton();
}

const FRAME_HANDLERS = {
  conversation: onConversation,
  "conversation.title": onConversationTitle,
  watching: onWatching,
  snapshot: onSnapshot,
  "message.start": onMessageStart,
  delta: onDelta,
  tool: onTool,
  "message.end": onMessageEnd,
  branch: onBranch,
  error: onError,
  pong: () => {},
};

// ---------------------------------------------------------------- composer

async function submitPrompt() {
  if (!promptEl.value.trim() || jumping !== null) return;
  // From an older page: the newest messages first, so that the new one shows after them.
  if (document.getElementById("latest-messages") !== null) await jumpToNewest(); // see "sending from an older page"
  const content = promptEl.value;
  if (!content.trim() || loggedOut) return;
  const frame = { type: "send", content, conversation_id: currentConversationId, model: modelPicker.value || null };
  // After the last message this page shows, so that it follows what the user sees (an
  // older page of the conversation sends it after the newest, as the server chooses).
  const last = [...messagesEl.querySelectorAll("article.message")].pop();
  const olderPage = document.getElementById("latest-messages") !== null;
  if (currentConversationId !== null && last && !olderPage) frame.parent_id = toId(last.dataset.messageId);
  if (currentConversationId === null) frame.settings = panelSettings(); // see "conversation settings"
  const attachments = attachmentIdsToSend(); // see "attachments"
  if (attachments === null) return;
  if (attachments.length) frame.attachments = attachments;
  requestAnswer(frame, content);
}

function onPromptKeydown(event) {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  if (enterMakesNewLine()) return; // see "phone and tablet"
  event.preventDefault();
  submitPrompt();
}

function onComposerSubmit(event) {
  event.preventDefault();
  submitPrompt();
  promptEl.focus(); // not lost with the Send button, which a send disables
}

function onStopClick() {
  for (const id of streamingIds()) sendFrame({ type: "stop", message_id: id });
}

function onMessagesClick(event) {
  const button = event.target.closest("button");
  if (!button || !messagesEl.contains(button)) return;
  const article = button.closest("article.message");
  const id = article ? toId(article.dataset.messageId) : null;
  if (button.classList.contains("copy-button")) copyCode(button);
  else if (id === null) return;
  else if (button.classList.contains("copy-answer")) copyAnswer(button, id);
  else if (button.classList.contains("regenerate")) requestAnswer({ type: "regenerate", message_id: id, model: modelPicker.value || null });
  else if (button.classList.contains("continue")) requestAnswer({ type: "continue", message_id: id });
  else if (button.classList.contains("branch-prev")) switchBranch(article, -1);
  else if (button.classList.contains("branch-next")) switchBranch(article, 1);
  else if (button.classList.contains("edit-message")) openEditor(article);
  else if (button.classList.contains("edit-cancel")) closeEditor(article);
}

async function copyAnswer(button, id) {
  const entry = entries.get(id);
  if (!entry) return;
  try {
    await navigator.clipboard.writeText(entry.content); // the Markdown, as the model wrote it
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
    return true;
  } catch {
    showNotice("Could not copy: the browser refused access to the clipboard.");
    return false;
  }
}

function switchBranch(article, step) {
  const ids = siblingsOf(article);
  const target = ids[ids.indexOf(toId(article.dataset.messageId)) + step];
  if (target !== undefined && sendFrame({ type: "switch", message_id: target })) branchFocus = { id: target, step };
}

// Editing a sent message: a box in its place; saving sends it as a new version (a branch).
function openEditor(article) {
  if (article.querySelector(".edit-form")) return;
  const content = article.querySelector(".content");
  const form = document.createElement("form");
  form.className = "edit-form";
  const box = document.createElement("textarea");
  box.className = "edit-box";
  box.value = content.textContent;
  box.rows = Math.min(12, Math.max(3, box.value.split("\n").length));
  box.maxLength = promptEl.maxLength;
  box.setAttribute("aria-label", "Edit message");
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "primary edit-save";
  save.textContent = "Save and send";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "edit-cancel";
  cancel.textContent = "Cancel";
  form.append(box, save, cancel);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitEdit(article, box.value);
  });
  box.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    event.preventDefault(); // its own meaning: not the page's Esc, which stops an answer
    closeEditor(article);
  });
  content.hidden = true;
  article.querySelector(".message-actions").hidden = true;
  content.after(form);
  box.focus();
}

function closeEditor(article) {
  const hadFocus = Boolean(article.querySelector(".edit-form")?.contains(document.activeElement));
  article.querySelector(".edit-form")?.remove();
  article.querySelector(".content").hidden = false;
  article.querySelector(".message-actions").hidden = false;
  if (hadFocus) article.querySelector(".edit-message")?.focus(); // not lost to <body>
}

function submitEdit(article, text) {
  if (!text.trim()) return;
  const frame = { type: "edit", conversation_id: currentConversationId, message_id: toId(article.dataset.messageId), content: text, model: modelPicker.value || null };
  if (!requestAnswer(frame)) return;
  closeEditor(article);
  promptEl.focus(); // the new version replaces this message: go on from the composer
}

// ---------------------------------------------------------------- conversation settings
// The panel above the composer (templates/chat/chat.html): an existing conversation's
// settings are saved at once (POST /c/<id>/settings/, whose answer carries the summary the
// server writes); a new chat's stay in the panel and go with its first `send` as `settings`.

const settingsForm = document.getElementById("settings-form");
const settingsSummary = document.getElementById("settings-summary");
const settingsStatus = document.getElementById("settings-status");
const effortField = document.getElementById("settings-effort-field");
const effortSelect = settingsForm.elements.reasoning_effort;
// The efforts each model accepts ({model: [efforts]}), from chat.capabilities.
const modelEfforts = JSON.parse(document.getElementById("model-efforts")?.textContent ?? "{}");
const NUMBER_SETTINGS = ["temperature", "top_p", "max_output_tokens"];

// A number field's value as JSON: null when empty; text the server then refuses, explaining.
function settingNumber(value) {
  if (value.trim() === "") return null;
  const number = Number(value);
  return Number.isFinite(number) ? number : value;
}

function panelSettings() {
  const fields = settingsForm.elements;
  const settings = { system_prompt: fields.system_prompt.value, reasoning_effort: effortSelect.value };
  for (const name of NUMBER_SETTINGS) settings[name] = settingNumber(fields[name].value);
  return settings;
}

// The line chat.prompts.settings_summary writes: keep the two alike.
function settingsSummaryText(settings) {
  const parts = [];
  if (settings.system_prompt && settings.system_prompt.trim()) parts.push("System prompt");
  if (settings.temperature !== null) parts.push(`temp ${settings.temperature}`);
  if (settings.top_p !== null) parts.push(`top_p ${settings.top_p}`);
  if (settings.max_output_tokens !== null) {
    const tokens = settings.max_output_tokens;
    parts.push(`max ${typeof tokens === "number" ? tokens.toLocaleString("en-US") : tokens} tokens`);
  }
  if (settings.reasoning_effort) parts.push(`effort ${settings.reasoning_effort}`);
  return parts.join(" · ") || "Default settings";
}

function setSettingsStatus(text, state = "") {
  settingsStatus.textContent = text;
  settingsStatus.dataset.state = state;
}

// Effort only where the selected model accepts one; the efforts it does not take disabled.
function updateEffortField() {
  const efforts = modelEfforts[modelPicker.value] || [];
  effortField.hidden = efforts.length === 0;
  for (const option of effortSelect.options) option.disabled = option.value !== "" && !efforts.includes(option.value);
}

function showSavedSettings(saved) {
  const fields = settingsForm.elements;
  fields.system_prompt.value = saved.system_prompt;
  effortSelect.value = saved.reasoning_effort;
  for (const name of NUMBER_SETTINGS) fields[name].value = saved[name] === null ? "" : String(saved[name]);
  settingsSummary.textContent = saved.summary;
}

function settingsErrorText(errors) {
  return Object.entries(errors).map(([name, messages]) => `${name}: ${messages.join(" ")}`).join(" ");
}

async function saveSettings(conversationId) {
  setSettingsStatus("Saving…");
  const body = new FormData(settingsForm);
  let response;
  try {
    response = await fetch(urlFor("settings", conversationId), { method: "POST", body, credentials: "same-origin" });
  } catch {
    setSettingsStatus("Not saved: the server could not be reached.", "error");
    return;
  }
  if (redirectedToLogin(response)) return showLoggedOut();
  const answer = await response.json().catch(() => null);
  if (response.ok && answer) {
    showSavedSettings(answer);
    setSettingsStatus("Saved: applied from the next message on.");
  } else if (answer && answer.errors) {
    setSettingsStatus(`Not saved: ${settingsErrorText(answer.errors)}`, "error");
  } else {
    setSettingsStatus(`Not saved (${response.status}).`, "error");
  }
}

function onSettingsSubmit(event) {
  event.preventDefault();
  if (currentConversationId === null) {
    settingsSummary.textContent = settingsSummaryText(panelSettings());
    setSettingsStatus("Kept: sent with this chat's first message.");
    return;
  }
  saveSettings(currentConversationId);
}

// A new chat's summary follows the panel as it is edited: it is what the first send takes.
// An existing chat's shows what is saved, until Save.
function onSettingsInput() {
  if (currentConversationId !== null) {
    setSettingsStatus("Changed: Save applies them to the next message.");
    return;
  }
  settingsSummary.textContent = settingsSummaryText(panelSettings());
}

function initSettingsPanel() {
  updateEffortField();
  settingsForm.addEventListener("submit", onSettingsSubmit);
  settingsForm.addEventListener("input", onSettingsInput);
  modelPicker.addEventListener("change", updateEffortField);
}

// ---------------------------------------------------------------- attachments
// Images for the next message (docs/protocol.md, "Attachments"): chosen with the attach
// button, pasted or dropped onto the composer, each uploaded at once (POST /attachments/),
// shown as a thumbnail with a remove button, and sent as the `send` frame's `attachments`.
// Offered only for the models that take images (#model-images, chat.attachments).

const attachButton = document.getElementById("attach-button");
const attachInput = document.getElementById("attach-input");
const pendingAttachmentsEl = document.getElementById("pending-attachments");
// {model: true/false}: whether it takes images.
const modelImages = JSON.parse(document.getElementById("model-images")?.textContent ?? "{}");
const MAX_IMAGES = Number(composer.dataset.maxImages) || 4;
const MAX_IMAGE_BYTES = Number(composer.dataset.maxImageBytes) || 10 * 1024 * 1024;
const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/webp", "image/gif"]);
const ATTACHMENT_PATH = /^\/attachments\/\d+\/(thumb\/)?$/;
// The composer's images, in order: {id (null while it uploads), chip}.
const composerAttachments = [];

function modelTakesImages() {
  return Boolean(modelImages[modelPicker.value]);
}

function uploadsInFlight() {
  return composerAttachments.some((item) => item.id === null);
}

// The button says why it is off: the model takes no images, or the message has its most.
function updateAttachButton() {
  const takes = modelTakesImages();
  const full = composerAttachments.length >= MAX_IMAGES;
  attachButton.disabled = !takes || full;
  if (!takes) attachButton.title = `${modelPicker.value} does not take images: choose a model that does to attach some.`;
  else if (full) attachButton.title = `A message may have at most ${MAX_IMAGES} images.`;
  else attachButton.title = "Attach images (PNG, JPEG, WebP or GIF)";
}

function megabytes(bytes) {
  return `${(bytes / 1048576).toFixed(bytes % 1048576 ? 1 : 0)} MiB`;
}

// Files the user attached, pasted or dropped: the images are uploaded, the rest refused.
function addImages(files) {
  for (const file of files) {
    if (!modelTakesImages()) {
      showNotice(`${modelPicker.value} does not take images: choose a model that does to attach some.`);
      return;
    }
    if (composerAttachments.length >= MAX_IMAGES) {
      showNotice(`A message may have at most ${MAX_IMAGES} images.`);
      return;
    }
    if (!IMAGE_TYPES.has(file.type)) showNotice(`${file.name || "That file"} is not a PNG, JPEG, WebP or GIF image.`);
    else if (file.size > MAX_IMAGE_BYTES) showNotice(`${file.name || "That image"} is too large: the most is ${megabytes(MAX_IMAGE_BYTES)}.`);
    else uploadImage(file);
  }
}

function buildAttachmentChip() {
  const chip = document.createElement("span");
  chip.className = "attachment-chip";
  chip.dataset.state = "uploading";
  const status = document.createElement("span");
  status.className = "attachment-status";
  status.textContent = "Uploading…";
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "attachment-remove";
  remove.textContent = "×";
  remove.setAttribute("aria-label", "Remove image");
  chip.append(status, remove);
  return chip;
}

function showChipThumbnail(chip, uploaded) {
  const image = document.createElement("img");
  image.alt = `Image to send, ${uploaded.width} × ${uploaded.height}`;
  if (ATTACHMENT_PATH.test(uploaded.thumbnail_url)) image.src = uploaded.thumbnail_url;
  chip.querySelector(".attachment-status").replaceWith(image);
  chip.dataset.state = "ready";
  chip.dataset.attachmentId = String(uploaded.id);
}

async function uploadImage(file) {
  const item = { id: null, chip: buildAttachmentChip() };
  composerAttachments.push(item);
  pendingAttachmentsEl.append(item.chip);
  pendingAttachmentsEl.hidden = false;
  updateAttachButton();
  updateSendButton();
  const body = new FormData();
  body.append("file", file);
  let response = null;
  let answer = null;
  try {
    response = await fetch(composer.dataset.uploadUrl, {
      method: "POST", body, credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() },
    });
    answer = await response.json().catch(() => null);
  } catch {
    // the server could not be reached: said below
  }
  const removed = !composerAttachments.includes(item);
  if (!response || !response.ok || !answer || !Number.isInteger(answer.id)) {
    if (!removed) dropAttachment(item);
    const reason = answer?.error || (response ? `the server answered ${response.status}` : "the server could not be reached");
    showNotice(`${file.name || "The image"} was not attached: ${reason}`);
    return;
  }
  if (removed) {
    deleteUpload(answer.id); // removed while it uploaded
    return;
  }
  item.id = answer.id;
  showChipThumbnail(item.chip, answer);
  updateSendButton();
}

function dropAttachment(item) {
  const index = composerAttachments.indexOf(item);
  if (index >= 0) composerAttachments.splice(index, 1);
  item.chip.remove();
  pendingAttachmentsEl.hidden = composerAttachments.length === 0;
  updateAttachButton();
  updateSendButton();
}

// The server forgets a removed upload (it would otherwise count against the pending cap).
function deleteUpload(id) {
  fetch(`${composer.dataset.uploadUrl}${id}/delete/`, {
    method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() },
  }).catch(() => {});
}

function onPendingAttachmentsClick(event) {
  const button = event.target.closest(".attachment-remove");
  if (!button) return;
  const item = composerAttachments.find((candidate) => candidate.chip.contains(button));
  if (!item) return;
  dropAttachment(item);
  if (item.id !== null) deleteUpload(item.id);
}

// The ids a send takes along; null (and the user told why) when it cannot go yet.
function attachmentIdsToSend() {
  if (composerAttachments.length === 0) return [];
  if (uploadsInFlight()) {
    showNotice("Wait for the images to finish uploading.");
    return null;
  }
  if (!modelTakesImages()) {
    showNotice(`${modelPicker.value} does not take images: choose a model that does, or remove them.`);
    return null;
  }
  return composerAttachments.map((item) => item.id);
}

// A send was taken: its images leave the composer (they belong to the message now).
function clearSentAttachments(ids) {
  for (const item of composerAttachments.filter((candidate) => ids.includes(candidate.id))) dropAttachment(item);
}

// A message's images (message.start's `user_message.attachments`, or the page's own
// markup): thumbnails linking to the full image, opened in a new tab.
function showAttachments(article, attachments) {
  const box = article.querySelector(".attachments");
  if (!box) return;
  box.replaceChildren();
  for (const attachment of attachments) {
    if (!ATTACHMENT_PATH.test(attachment.url) || !ATTACHMENT_PATH.test(attachment.thumbnail_url)) continue;
    const link = document.createElement("a");
    link.className = "attachment";
    link.href = attachment.url;
    link.target = "_blank";
    link.rel = "noopener";
    link.dataset.attachmentId = String(attachment.id);
    const image = document.createElement("img");
    image.src = attachment.thumbnail_url;
    image.alt = `Attached image, ${attachment.width} × ${attachment.height}`;
    link.append(image);
    box.append(link);
  }
  box.hidden = box.childElementCount === 0;
}

function imageFiles(list) {
  return [...(list || [])].filter((file) => file.type.startsWith("image/"));
}

function onAttachInputChange() {
  addImages([...attachInput.files]);
  attachInput.value = ""; // the same file may be chosen again
}

// Pasted images are attached; pasted text still goes into the box as usual.
function onPromptPaste(event) {
  const files = imageFiles(event.clipboardData?.files);
  if (files.length === 0) return;
  if (!event.clipboardData.types.includes("text/plain")) event.preventDefault();
  addImages(files);
}

function draggingFiles(event) {
  return Boolean(event.dataTransfer?.types?.includes("Files"));
}

function onComposerDragOver(event) {
  if (!draggingFiles(event)) return;
  event.preventDefault();
  composer.classList.add("dropping");
}

function onComposerDragLeave() {
  composer.classList.remove("dropping");
}

function onComposerDrop(event) {
  if (!draggingFiles(event)) return;
  event.preventDefault();
  composer.classList.remove("dropping");
  addImages([...event.dataTransfer.files]);
}

function initAttachments() {
  updateAttachButton();
  attachButton.addEventListener("click", () => attachInput.click());
  attachInput.addEventListener("change", onAttachInputChange);
  pendingAttachmentsEl.addEventListener("click", onPendingAttachmentsClick);
  promptEl.addEventListener("paste", onPromptPaste);
  composer.addEventListener("dragover", onComposerDragOver);
  composer.addEventListener("dragleave", onComposerDragLeave);
  composer.addEventListener("drop", onComposerDrop);
  modelPicker.addEventListener("change", updateAttachButton);
}

// ---------------------------------------------------------------- web and X search
// The composer's toggles (templates/chat/chat.html, chat.search): off by default, kept in
// this tab's sessionStorage while it lives, and sent as `search` with each send, edit and
// regenerate. While an answer streams, its tool calls show in it ("Searching the web…");
// once it ended, its sources show under it as numbered chips.

const searchToggles = [...document.querySelectorAll("#search-toggles input[data-search]")];
const SEARCH_STORAGE_KEY = "grokchat.search";
const SEARCH_FRAMES = new Set(["send", "edit", "regenerate"]);
// Once a call has ended, a late status (relayed by another process) does not revive it.
const TOOL_FINAL_STATES = new Set(["completed", "failed", "incomplete"]);
const TOOL_WORDS = {
  web_search: { busy: "Searching the web…", done: "Searched the web", name: "Web search" },
  x_search: { busy: "Searching X…", done: "Searched X", name: "X search" },
};
const WEB_URL = /^https?:\/\//i;

function storedSearch() {
  try {
    return JSON.parse(sessionStorage.getItem(SEARCH_STORAGE_KEY) || "{}") || {};
  } catch {
    return {}; // storage refused (privacy settings) or garbled: all off
  }
}

function onSearchToggle() {
  const choice = {};
  for (const toggle of searchToggles) choice[toggle.dataset.search] = toggle.checked;
  try {
    sessionStorage.setItem(SEARCH_STORAGE_KEY, JSON.stringify(choice));
  } catch {
    // kept on the page only
  }
}

function initSearchToggles() {
  const stored = storedSearch();
  for (const toggle of searchToggles) {
    toggle.checked = !toggle.disabled && stored[toggle.dataset.search] === true;
    toggle.addEventListener("change", onSearchToggle);
  }
}

// `frame` with the toggles that are on, as `search` ({"web": true}), if it takes them.
function withSearch(frame) {
  if (!SEARCH_FRAMES.has(frame.type)) return frame;
  const search = {};
  for (const toggle of searchToggles) if (toggle.checked && !toggle.disabled) search[toggle.dataset.search] = true;
  return Object.keys(search).length ? { ...frame, search } : frame;
}

function mergeToolStatus(entry, status) {
  const previous = entry.tools.get(status.id);
  if (previous && TOOL_FINAL_STATES.has(previous.state) && !TOOL_FINAL_STATES.has(status.state)) return;
  entry.tools.set(status.id, {
    kind: status.kind,
    state: status.state,
    name: status.name || previous?.name || "",
    query: status.query || previous?.query || "",
  });
}

function onTool(frame) {
  if (currentConversationId === null) return;
  const entry = entryOnPage(frame.message_id);
  if (!entry || entry.state !== "streaming") return; // a late frame after message.end
  mergeToolStatus(entry, frame);
  scheduleRender(frame.message_id);
}

// "Searching the web…" while a call runs, "Searched the web" once done, "Web search failed".
function toolLabel(status) {
  const tool = status.name || status.kind;
  const words = TOOL_WORDS[status.kind] || { busy: `Running ${tool}…`, done: `Ran ${tool}`, name: tool };
  if (status.state === "completed") return words.done;
  if (TOOL_FINAL_STATES.has(status.state)) return `${words.name} ${status.state}`;
  return words.busy;
}

function renderToolCalls(entry) {
  const list = entry.article.querySelector(".tool-calls");
  // Rebuilt only when a status changed, not for each delta of text.
  if (!list || list.dataset.shown === toolsKey(entry)) return;
  list.dataset.shown = toolsKey(entry);
  const items = [];
  for (const [id, status] of entry.tools) {
    const item = document.createElement("li");
    item.className = "tool-call";
    item.dataset.toolId = id;
    item.dataset.kind = status.kind;
    item.dataset.state = status.state;
    const label = document.createElement("span");
    label.className = "tool-label";
    label.textContent = toolLabel(status);
    item.append(label);
    if (status.query) {
      const query = document.createElement("span");
      query.className = "tool-query";
      query.textContent = status.query;
      item.append(" ", query);
    }
    items.push(item);
  }
  list.replaceChildren(...items);
  list.hidden = items.length === 0;
}

function toolsKey(entry) {
  return JSON.stringify([...entry.tools]);
}

// One numbered chip: a link (a new tab, no opener, no referrer) only for an http(s) URL,
// showing its domain; anything else is shown as text. As chat.search.source_chip.
function sourceChip(number, citation) {
  const url = typeof citation?.url === "string" ? citation.url : "";
  const title = typeof citation?.title === "string" && citation.title ? citation.title : url;
  const cleaned = url.replace(/[\t\n\r]/g, "").replace(/^[\x00-\x20]+|[\x00-\x20]+$/g, "");
  let parsed = null;
  if (WEB_URL.test(cleaned)) {
    try {
      parsed = new URL(cleaned);
    } catch {
      parsed = null;
    }
  }
  const link = parsed !== null && parsed.hostname !== "";
  const chip = document.createElement(link ? "a" : "span");
  chip.className = "source";
  chip.title = title;
  if (link) {
    chip.href = parsed.href;
    chip.target = "_blank";
    chip.rel = "noopener noreferrer";
  }
  const numberEl = document.createElement("span");
  numberEl.className = "source-number";
  numberEl.textContent = String(number);
  const label = document.createElement("span");
  label.className = "source-label";
  label.textContent = link ? parsed.hostname.replace(/^www\./, "") : url.slice(0, 80);
  chip.append(numberEl, " ", label);
  const item = document.createElement("li");
  item.append(chip);
  return item;
}

function renderSources(entry) {
  const list = entry.article.querySelector(".sources");
  if (!list || entry.citations === null) return; // as the server rendered them
  list.replaceChildren(...entry.citations.map((citation, index) => sourceChip(index + 1, citation)));
  list.hidden = entry.citations.length === 0;
}

// ---------------------------------------------------------------- announcements
// #messages is not a live region (a screen reader would read every token): #answer-status,
// a visually hidden role=status, says when an answer starts and how it ended, never per
// delta. Focus: after the page loads a path again (a branch switch), it goes back to the
// message it was on, or to the branch control that was used, not to <body>.

const answerStatus = document.getElementById("answer-status");
const ANNOUNCED_CHARS = 160;
const END_WORDS = {
  stopped: "The answer was stopped.",
  interrupted: "The answer was interrupted.",
  error: "The answer failed.",
};
// {id, step}: the version a ‹ or › asked for, to focus once the page shows it.
let branchFocus = null;

function announce(text) {
  if (answerStatus) answerStatus.textContent = text;
}

function announceStart() {
  announce("Grok is answering…");
}

function announceEnd(entry) {
  if (entry.state !== "complete") {
    announce([END_WORDS[entry.state] || "The answer ended.", entry.error].filter(Boolean).join(" "));
    return;
  }
  const content = entry.article.querySelector(".content").cloneNode(true);
  for (const button of content.querySelectorAll("button")) button.remove(); // code blocks' Copy
  const text = content.textContent.replace(/\s+/g, " ").trim();
  if (!text) {
    announce("Answer complete.");
    return;
  }
  const start = text.length > ANNOUNCED_CHARS ? `${text.slice(0, ANNOUNCED_CHARS).trimEnd()}…` : text;
  announce(`Grok answered: ${start}`);
}

// The id of the message that holds the focus, if one does.
function focusedMessageId() {
  const article = document.activeElement?.closest?.("#messages article.message");
  return article ? toId(article.dataset.messageId) : null;
}

function focusArticle(article) {
  article.tabIndex = -1;
  article.focus();
}

// After #messages was replaced: the branch control that was used (the other one when it is
// now disabled at the first or last version), else the message that had the focus.
function restoreMessageFocus(focusedId) {
  const wanted = branchFocus;
  branchFocus = null;
  const target = wanted ? findArticle(wanted.id) : focusedId === null ? null : findArticle(focusedId);
  if (!target) {
    if (wanted || focusedId !== null) messagesEl.focus(); // its message is gone: the list, at least
    return;
  }
  if (!wanted) {
    focusArticle(target);
    return;
  }
  const buttons = [target.querySelector(wanted.step < 0 ? ".branch-prev" : ".branch-next"), target.querySelector(wanted.step < 0 ? ".branch-next" : ".branch-prev")];
  const button = buttons.find((candidate) => candidate && !candidate.disabled && !candidate.closest("[hidden]"));
  if (button) button.focus();
  else focusArticle(target);
}

// ---------------------------------------------------------------- keyboard
// The shortcuts, defined once: the key handler and the help (`?`) both read SHORTCUTS, and
// the help lists those offered on this page. The chords are Alt+Shift+letter on Windows and
// Linux and Control+Shift+letter on macOS: Ctrl/Cmd+Shift+O, Ctrl/Cmd+Shift+C and Shift+Esc
// (ChatGPT's) open Chromium's bookmark manager, DevTools' inspector and task manager, while
// Alt+Shift (Chromium: T, I, A only) and macOS's Control+Shift are free of the browsers' own,
// and Option would type characters (Ç) on a Mac. Letters match event.code: layouts differ.

const shortcutsDialog = document.getElementById("shortcuts-dialog");
const shortcutsList = document.getElementById("shortcuts-list");
const shortcutsButton = document.getElementById("shortcuts-button");
const IS_MAC = /mac/i.test(navigator.userAgentData?.platform || navigator.platform || "");
const CHORD_MODIFIER = IS_MAC ? "Control" : "Alt";
const TEXT_INPUT_TYPES = new Set(["text", "search", "email", "url", "tel", "password", "number"]);

// Alt+Shift+<code> (Control+Shift+<code> on a Mac), nothing else held.
function isChord(event, code) {
  const modifier = IS_MAC ? event.ctrlKey && !event.altKey : event.altKey && !event.ctrlKey;
  return modifier && event.shiftKey && !event.metaKey && event.code === code;
}

function isTextField(element) {
  if (!element || element === document.body) return false;
  if (element.isContentEditable || element.tagName === "TEXTAREA" || element.tagName === "SELECT") return true;
  return element.tagName === "INPUT" && TEXT_INPUT_TYPES.has(element.type);
}

function searchInput() {
  return document.getElementById("conversation-search"); // the sidebar's, where it has one
}

// On an older page of the conversation ("Show earlier messages") the last message shown is
// not the last one: none.
function lastUserArticle() {
  if (document.getElementById("latest-messages")) return null;
  const users = [...messagesEl.querySelectorAll("article.message[data-role=user]")].filter((article) => toId(article.dataset.messageId) !== null);
  return users.pop() || null;
}

// The last answer with a Copy button to press (one that streams has none yet).
function lastCopyButton() {
  const buttons = [...messagesEl.querySelectorAll("article.message[data-role=assistant] .copy-answer")];
  return buttons.filter((button) => !button.hidden).pop() || null;
}

function stopStreaming(event) {
  // Esc in the editor or a dialog closes it first; with nothing streaming it is left alone.
  if (event.target.closest?.("dialog, .edit-form") || document.querySelector("dialog[open]")) return false;
  if (streamingIds().length === 0) return false;
  onStopClick();
  announce("Stopping the answer…");
  return true;
}

function copyLastAnswer() {
  const button = lastCopyButton();
  if (!button) return false;
  copyAnswer(button, toId(button.closest("article.message").dataset.messageId)).then((copied) => {
    if (copied) announce("Copied the last answer."); // its button, which says so, has not the focus
  });
  return true;
}

function editLastMessage(event) {
  const empty = promptEl.value === "" && promptEl.selectionStart === 0 && promptEl.selectionEnd === 0;
  const article = lastUserArticle();
  if (event.target !== promptEl || !empty || !article) return false;
  openEditor(article);
  article.querySelector(".edit-box")?.focus(); // also when its editor was open already
  return true;
}

const SHORTCUTS = [
  {
    keys: ["Esc"],
    action: "Stop the answer that is streaming",
    matches: (event) => event.key === "Escape" && !event.altKey && !event.ctrlKey && !event.metaKey && !event.shiftKey,
    offered: () => true,
    run: stopStreaming,
    control: () => stopButton,
  },
  {
    keys: [CHORD_MODIFIER, "Shift", "O"],
    action: "New chat",
    matches: (event) => isChord(event, "KeyO"),
    offered: () => document.getElementById("new-chat") !== null,
    control: () => document.getElementById("new-chat"),
    run: () => {
      location.assign(document.getElementById("new-chat").href);
      return true;
    },
  },
  {
    keys: [CHORD_MODIFIER, "Shift", "M"],
    action: "Go to the message box",
    matches: (event) => isChord(event, "KeyM"),
    offered: () => true,
    control: () => promptEl,
    run: () => {
      promptEl.focus();
      return true;
    },
  },
  {
    keys: [CHORD_MODIFIER, "Shift", "K"],
    action: "Search conversations",
    matches: (event) => isChord(event, "KeyK"),
    offered: () => searchInput() !== null,
    run: () => {
      searchInput().focus();
      return true;
    },
  },
  {
    keys: [CHORD_MODIFIER, "Shift", "C"],
    action: "Copy the last answer (as Markdown)",
    matches: (event) => isChord(event, "KeyC"),
    offered: () => lastCopyButton() !== null,
    run: copyLastAnswer,
  },
  {
    keys: ["↑"],
    action: "Edit your last message (in the empty message box)",
    matches: (event) => event.key === "ArrowUp" && !event.altKey && !event.ctrlKey && !event.metaKey && !event.shiftKey,
    offered: () => lastUserArticle() !== null,
    run: editLastMessage,
  },
  {
    keys: ["?"],
    action: "Show these shortcuts (outside a text field)",
    matches: (event) => event.key === "?" && !event.altKey && !event.ctrlKey && !event.metaKey && !isTextField(event.target),
    offered: () => true,
    run: () => {
      if (shortcutsDialog.open) return false;
      openShortcuts();
      return true;
    },
  },
];

function onDocumentKeydown(event) {
  if (event.defaultPrevented || event.isComposing) return;
  const shortcut = SHORTCUTS.find((candidate) => candidate.matches(event));
  if (!shortcut || !shortcut.offered() || !shortcut.run(event)) return;
  event.preventDefault();
}

function shortcutRow(shortcut) {
  const row = document.createElement("tr");
  const keys = document.createElement("td");
  shortcut.keys.forEach((key, index) => {
    const kbd = document.createElement("kbd");
    kbd.textContent = key;
    keys.append(...(index ? ["+", kbd] : [kbd]));
  });
  const action = document.createElement("td");
  action.textContent = shortcut.action;
  row.append(keys, action);
  return row;
}

function openShortcuts() {
  shortcutsList.replaceChildren(...SHORTCUTS.filter((shortcut) => shortcut.offered()).map(shortcutRow));
  shortcutsDialog.showModal(); // the browser returns the focus where it was when it closes
}

// Screen readers tell of a control's shortcut from its aria-keyshortcuts ("Alt+Shift+O").
function labelShortcutControls() {
  for (const shortcut of SHORTCUTS) {
    const keys = shortcut.keys.map((key) => (key === "Esc" ? "Escape" : key)).join("+");
    shortcut.control?.()?.setAttribute("aria-keyshortcuts", keys);
  }
}

function initKeyboard() {
  labelShortcutControls();
  document.addEventListener("keydown", onDocumentKeydown);
  shortcutsButton?.addEventListener("click", openShortcuts);
}

// ---------------------------------------------------------------- phone and tablet
// Below 900px (static/css/chat.css) the sidebar is a drawer; on touch screens Enter makes a
// new line and the Send button sends; the composer stays above the on-screen keyboard.

const DRAWER_QUERY = window.matchMedia("(max-width: 899px)");
// Touch input, whatever the device says it is: a coarse pointer or no hover.
const TOUCH_QUERY = window.matchMedia("(pointer: coarse), (hover: none)");
const PLACEHOLDERS = {
  keyboard: "Message Grok (Enter to send, Shift+Enter for a new line)",
  touch: "Message Grok (Send to send, Enter for a new line)",
};

function enterMakesNewLine() {
  return TOUCH_QUERY.matches;
}

function updatePromptPlaceholder() {
  promptEl.placeholder = enterMakesNewLine() ? PLACEHOLDERS.touch : PLACEHOLDERS.keyboard;
}

function drawerIsOpen() {
  return document.body.classList.contains("drawer-open");
}

function openDrawer() {
  if (!DRAWER_QUERY.matches || drawerIsOpen()) return;
  document.body.classList.add("drawer-open");
  sidebarToggle.setAttribute("aria-expanded", "true");
  sidebarBackdrop.hidden = false;
  chatEl.inert = true; // what the drawer covers is out of reach until it closes
  const current = conversationList.querySelector("a[aria-current=page]");
  (current || document.getElementById("new-chat")).focus();
}

function closeDrawer({ restoreFocus = true } = {}) {
  if (!drawerIsOpen()) return;
  document.body.classList.remove("drawer-open");
  sidebarToggle.setAttribute("aria-expanded", "false");
  sidebarBackdrop.hidden = true;
  chatEl.inert = false;
  if (restoreFocus && DRAWER_QUERY.matches) sidebarToggle.focus();
}

function onSidebarToggleClick() {
  if (drawerIsOpen()) closeDrawer();
  else openDrawer();
}

function onDrawerKeydown(event) {
  if (event.key === "Escape" && drawerIsOpen()) {
    event.preventDefault();
    closeDrawer();
  }
}

// Choosing a conversation (or a new chat) closes the drawer, whether the link loads a page
// or is handled on this one.
function onSidebarClick(event) {
  const link = event.target.closest("a");
  const chosen = link && (conversationList.contains(link) || searchResults?.contains(link) || link.id === "new-chat");
  if (chosen) closeDrawer({ restoreFocus: false });
}

function onDrawerQueryChange() {
  if (!DRAWER_QUERY.matches) closeDrawer({ restoreFocus: false });
}

// Where an on-screen keyboard overlays the page instead of resizing it (the viewport meta's
// interactive-widget=resizes-content is not honoured everywhere), the page takes the
// visual viewport's height, so that the composer stays above the keyboard.
function fitVisualViewport() {
  const viewport = window.visualViewport;
  if (!viewport || Math.abs(viewport.scale - 1) > 0.01) return; // not while pinch-zoomed
  const covered = window.innerHeight - viewport.height;
  if (covered > 1) document.documentElement.style.setProperty("--visual-height", `${viewport.height}px`);
  else document.documentElement.style.removeProperty("--visual-height");
}

function initPhoneAndTablet() {
  updatePromptPlaceholder();
  TOUCH_QUERY.addEventListener("change", updatePromptPlaceholder);
  sidebarToggle?.addEventListener("click", onSidebarToggleClick);
  sidebarBackdrop?.addEventListener("click", () => closeDrawer());
  sidebar.addEventListener("click", onSidebarClick);
  document.addEventListener("keydown", onDrawerKeydown);
  DRAWER_QUERY.addEventListener("change", onDrawerQueryChange);
  window.visualViewport?.addEventListener("resize", fitVisualViewport);
  fitVisualViewport();
}

// ---------------------------------------------------------------- exports

// "Export: Markdown · JSON" under a conversation's actions, as chat.html renders them.
function exportLinks(conversation) {
  const links = document.createElement("p");
  links.id = "export-links";
  links.className = "export-links";
  const markdown = exportLink("export-md-link", urlFor("exportMd", conversation.id), "Markdown");
  const json = exportLink("export-json-link", urlFor("exportJson", conversation.id), "JSON");
  links.append("Export: ", markdown, " · ", json);
  return links;
}

function exportLink(id, href, text) {
  const link = document.createElement("a");
  link.id = id;
  link.href = href;
  link.download = "";
  link.textContent = text;
  return link;
}

// ---------------------------------------------------------------- sending from an older page
// A page of earlier messages (?before=<id>) shows the newest ones before a send, as the
// conversation's own address, so that the new message and its answer follow them.

let jumping = null;

async function jumpToNewest() {
  jumping = refreshMessages();
  updateSendButton();
  try {
    await jumping;
  } finally {
    jumping = null;
    updateSendButton();
  }
  if (currentConversationId !== null && document.getElementById("latest-messages") === null) {
    history.replaceState(null, "", urlFor("conversation", currentConversationId));
  }
}

// ---------------------------------------------------------------- session
// Logged out elsewhere (another tab, a password change, an admin): the page says so and
// nothing else, stops reconnecting, and keeps what was typed for after the login. Any
// fetch of ours that login_required sent to the login page says the same (redirectedToLogin).

let loggedOut = false;

function draftKey() {
  return `grokchat:draft:${location.pathname}${location.search}`;
}

function redirectedToLogin(response) {
  return response.redirected && new URL(response.url).pathname === loggedOutEl.dataset.loginUrl;
}

function showLoggedOut() {
  if (loggedOut) return;
  loggedOut = true;
  clearInterval(pingTimer);
  if (socket !== null && socket.readyState === WebSocket.OPEN) socket.close();
  if (promptEl.value.trim()) sessionStorage.setItem(draftKey(), promptEl.value);
  const next = new URLSearchParams({ next: location.pathname + location.search });
  const link = loggedOutEl.querySelector("a");
  link.href = `${loggedOutEl.dataset.loginUrl}?${next}`;
  for (const element of document.body.children) {
    if (element !== loggedOutEl && element.tagName !== "SCRIPT") element.inert = true;
  }
  document.body.classList.add("is-logged-out");
  loggedOutEl.hidden = false;
  link.focus();
}

// The draft a logout left, back in the composer of the same page after the login.
function restoreDraft() {
  const draft = sessionStorage.getItem(draftKey());
  if (draft === null) return;
  sessionStorage.removeItem(draftKey());
  if (!promptEl.value.trim()) promptEl.value = draft;
}

// ---------------------------------------------------------------- streaming markdown
// While an answer streams, its finished Markdown blocks are rendered once and kept; each
// frame parses and renders only the text after them (the open block), so a frame costs
// the same however long the answer is. An ended or stored answer gets one full render
// (renderMarkdown), and each frame's DOM equals that full render of the text so far.
// A block is finished when markdown-it has started a next block after it on a complete
// line, and a blank line (or a block that cannot go on: heading, fence, rule) lies between.

const CLOSED_BLOCKS = new Set(["heading_open", "fence", "hr"]);
// Lines end as markdown-it ends them (it turns "\r\n" and "\r" into "\n" before parsing).
const LINE_END = /\r\n?|\n/g;
const BLANK_LINE = /^[ \t]*(\r\n?|\n)$/;
const streamStates = new WeakMap(); // an answer's .content -> what of it is kept (newStreamState)
// Set only by the tests and the benchmark (an init script), which read what each frame did.
const renderStats = window.__renderStats ?? null;
let frameChars = 0; // characters handed to markdown-it in this frame

function renderAnswerText(target, entry) {
  if (entry.state === "streaming") {
    renderStreaming(target, entry.content);
    return;
  }
  // An answer that streamed here ends with one more frame, not a full render: every frame
  // equals the full render (tests/test_render_browser.py), which would pause a long answer's end.
  const state = streamStates.get(target);
  if (state && entry.content.startsWith(state.stable)) renderStreaming(target, entry.content);
  else renderMarkdown(target, entry.content);
  streamStates.delete(target);
}

// `stable`: the text whose blocks are kept; `references`: the link definitions in it;
// `shownRefs`: the definitions the kept chunks were rendered with; `chunks`: {src, norm,
// separated, nodes} in order; `tail`: the nodes of the open block(s), rebuilt each frame;
// `hasNodes`: whether anything is kept yet (a "\n" then goes before what comes next).
function newStreamState(target) {
  target.replaceChildren();
  const state = { stable: "", references: {}, shownRefs: {}, chunks: [], tail: [], hasNodes: false };
  streamStates.set(target, state);
  return state;
}

function renderStreaming(target, text) {
  let state = streamStates.get(target);
  // A snapshot replaces the text rather than extends it: start again (a memcmp, no parse).
  if (!state || !text.startsWith(state.stable)) state = newStreamState(target);
  const tail = text.slice(state.stable.length);
  const env = { references: { ...state.references } };
  const tokens = parseCounted(tail, env);
  refreshReferences(state, env.references);
  for (const node of state.tail) node.remove();
  const cut = finishedBlocks(tail, tokens);
  if (cut) keepChunk(target, state, tail.slice(0, cut.offset), tokens.slice(0, cut.index), env);
  const open = cut ? tokens.slice(cut.index) : tokens;
  state.tail = sanitizedNodes(md.renderer.render(open, md.options, env).trim(), state.hasNodes);
  target.append(...state.tail);
  if (renderStats) renderStats.lastText = text;
  if (renderStats?.check) checkAgainstFullRender(target, text);
}

function parseCounted(text, env) {
  frameChars += text.length;
  return md.parse(text, env);
}

// Where the finished blocks of `tail` end: {offset, index of the first token after them}.
function finishedBlocks(tail, tokens) {
  const starts = lineStarts(tail);
  let previous = null;
  let cut = null;
  tokens.forEach((token, index) => {
    if (token.level !== 0 || token.nesting === -1 || !token.map) return;
    const line = token.map[0];
    // A next block's first line still growing may yet turn out to continue this one ("2" -> "2. item").
    const complete = line + 1 < starts.length;
    const blank = line > 0 && BLANK_LINE.test(tail.slice(starts[line - 1], starts[line]));
    const closed = previous !== null && CLOSED_BLOCKS.has(previous.type) && previous.map[1] === line;
    if (previous !== null && complete && (blank || closed)) cut = { offset: starts[line], index };
    previous = token;
  });
  return cut;
}

function lineStarts(text) {
  const starts = [0];
  for (const end of text.matchAll(LINE_END)) starts.push(end.index + end[0].length);
  return starts;
}

// The finished blocks join the kept ones; their link definitions serve every later frame.
function keepChunk(target, state, src, tokens, env) {
  const own = { references: { ...state.references } };
  parseCounted(src, own); // its definitions: once per chunk, as markdown-it reads them
  state.references = own.references;
  state.stable += src;
  const nodes = sanitizedNodes(md.renderer.render(tokens, md.options, env).trimEnd(), state.hasNodes);
  state.chunks.push({ src, norm: referenceText(src), separated: state.hasNodes && nodes.length > 0, nodes });
  state.hasNodes ||= nodes.length > 0;
  target.append(...nodes);
}

// A full render joins blocks with "\n" and trims the ends: kept chunks and the tail do the same.
function sanitizedNodes(html, separated) {
  if (!html) return [];
  const box = document.createElement("div");
  box.innerHTML = DOMPurify.sanitize(html, PURIFY_CONFIG);
  decorateCodeBlocks(box);
  const nodes = [...box.childNodes];
  return separated ? [document.createTextNode("\n"), ...nodes] : nodes;
}

// A block's text as markdown-it matches labels (case and spaces folded), to find `[label]`.
function referenceText(src) {
  return md.utils.normalizeReference(src).replace(/\[ /g, "[").replace(/ \]/g, "]");
}

// A definition that appears, changes or goes later re-renders the kept chunks that use it.
function refreshReferences(state, references) {
  const labels = changedLabels(state.shownRefs, references);
  state.shownRefs = references;
  if (labels.length === 0) return;
  for (const chunk of state.chunks) {
    if (chunk.nodes.length === 0 || !labels.some((label) => chunk.norm.includes(`[${label}]`))) continue;
    const html = md.renderer.render(parseCounted(chunk.src, { references: { ...references } }), md.options, {});
    const nodes = sanitizedNodes(html.trimEnd(), chunk.separated);
    chunk.nodes[0].before(...nodes);
    for (const node of chunk.nodes) node.remove();
    chunk.nodes = nodes;
  }
}

function changedLabels(before, after) {
  const labels = new Set([...Object.keys(before), ...Object.keys(after)]);
  return [...labels].filter((label) => before[label]?.href !== after[label]?.href || before[label]?.title !== after[label]?.title);
}

// Tests and the benchmark: what each frame parsed and how long it took.
function noteFrame(started) {
  if (renderStats) renderStats.frames.push({ chars: frameChars, ms: performance.now() - started });
  frameChars = 0;
}

function fullRenderHtml(text) {
  const box = document.createElement("div");
  renderMarkdown(box, text);
  return box.innerHTML;
}

function checkAgainstFullRender(target, text) {
  renderStats.checked += 1;
  if (target.innerHTML !== fullRenderHtml(text)) renderStats.mismatches.push(text);
}

if (renderStats) {
  Object.assign(renderStats, {
    frames: [], checked: 0, lastText: null, mismatches: [], fullRender: fullRenderHtml, streamInto: renderStreaming,
  });
}

// ---- sidebar pages, date groups and search (issue 16) ----
// The server groups conversations by date (chat.sidebar) in the browser's time zone, kept
// in the `tz` cookie; the "Load more" button at the end of #conversation-list fetches the
// next page, when clicked or when it scrolls into view. Search (chat.finder) shows its
// results in #search-results in place of the groups.

const SEARCH_DELAY_MS = 250;
let loadingMore = null;
let searchTimer = null;
let searchAbort = null;
const loadMoreObserver = "IntersectionObserver" in window
  ? new IntersectionObserver(onLoadMoreVisible, { root: conversationList, rootMargin: "200px" })
  : null;

// Our own templates' output, every text in it escaped by Django: as the page was rendered.
function parseFragment(html) {
  return document.createRange().createContextualFragment(html);
}

function todayGroupList() {
  let group = conversationList.querySelector('section.conversation-group[data-group="today"]');
  if (!group) {
    group = document.createElement("section");
    group.className = "conversation-group";
    group.dataset.group = "today";
    const heading = document.createElement("h2");
    heading.className = "conversation-group-heading";
    heading.textContent = "Today";
    group.append(heading, document.createElement("ul"));
    conversationList.prepend(group);
  }
  return group.querySelector("ul");
}

function removeEmptyGroups() {
  for (const group of conversationList.querySelectorAll("section.conversation-group")) {
    if (!group.querySelector("li")) group.remove();
  }
}

// A page's groups after those shown: its first group joins the last one when they are the
// same date group, and a conversation already shown (it moved up meanwhile) is left out.
function appendConversationPage(html) {
  const fragment = parseFragment(html);
  for (const item of fragment.querySelectorAll("li[data-conversation-id]")) {
    if (conversationList.querySelector(`li[data-conversation-id="${CSS.escape(item.dataset.conversationId)}"]`)) item.remove();
  }
  const groups = conversationList.querySelectorAll("section.conversation-group");
  const last = groups[groups.length - 1];
  const first = fragment.querySelector("section.conversation-group");
  if (last && first && first.dataset.group === last.dataset.group) {
    last.querySelector("ul").append(...first.querySelectorAll("li"));
    first.remove();
  }
  conversationList.append(fragment);
  removeEmptyGroups();
  markCurrentConversation(currentConversationId);
  observeLoadMore();
}

function loadMoreConversations() {
  const button = conversationList.querySelector("button.load-more");
  if (!button || loadingMore) return loadingMore;
  button.disabled = true;
  button.textContent = "Loading…";
  loadingMore = fetch(button.dataset.url, { credentials: "same-origin" })
    .then((response) => {
      if (!response.ok) throw new Error(String(response.status));
      return response.text();
    })
    .then((html) => {
      button.remove();
      appendConversationPage(html);
    })
    .catch(() => {
      button.disabled = false;
      button.textContent = "Load more";
      showNotice("Could not load more conversations. Try again.");
    })
    .finally(() => { loadingMore = null; });
  return loadingMore;
}

function onLoadMoreVisible(observed) {
  if (observed.some((entry) => entry.isIntersecting)) loadMoreConversations();
}

function observeLoadMore() {
  loadMoreObserver?.disconnect();
  const button = conversationList.querySelector("button.load-more");
  if (button) loadMoreObserver?.observe(button);
}

function onConversationListClick(event) {
  if (event.target.closest("button.load-more")) loadMoreConversations();
}

// The groups were made in the server's idea of our time zone: when it is not ours, say
// ours (the cookie) and fetch the first page again.
function syncTimeZone() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (!zone) return;
  document.cookie = `tz=${encodeURIComponent(zone)}; path=/; max-age=31536000; SameSite=Lax`;
  if (zone === conversationList.dataset.timezone) return;
  // As a page load: no other page is loaded meanwhile, to be joined to groups going away.
  loadingMore = fetch(conversationList.dataset.url, { credentials: "same-origin" })
    .then((response) => (response.ok ? response.text() : null))
    .then((html) => {
      if (html === null) return;
      conversationList.replaceChildren();
      conversationList.dataset.timezone = zone;
      appendConversationPage(html);
    })
    .catch(() => {}) // the groups of the server's time zone stay: still every conversation
    .finally(() => {
      loadingMore = null;
      observeLoadMore();
    });
}

function showDateGroups() {
  searchAbort?.abort();
  searchResults.hidden = true;
  searchResults.replaceChildren();
  conversationList.hidden = false;
}

async function runSearch(query) {
  searchAbort?.abort();
  searchAbort = new AbortController();
  const url = `${conversationSearch.dataset.url}?${new URLSearchParams({ q: query })}`;
  let html;
  try {
    const response = await fetch(url, { credentials: "same-origin", signal: searchAbort.signal });
    if (!response.ok) throw new Error(String(response.status));
    html = await response.text();
  } catch (error) {
    if (error.name === "AbortError") return;
    html = "";
    showNotice("Search failed. Try again.");
  }
  if (conversationSearch.value.trim() !== query) return; // typed on meanwhile, or cleared
  searchResults.replaceChildren(parseFragment(html));
  searchResults.hidden = false;
  conversationList.hidden = true;
}

function onSearchInput() {
  clearTimeout(searchTimer);
  const query = conversationSearch.value.trim();
  if (!query) {
    showDateGroups();
    return;
  }
  searchTimer = setTimeout(() => runSearch(query), SEARCH_DELAY_MS);
}

function onSearchKeydown(event) {
  if (event.key !== "Escape") return;
  event.preventDefault();
  clearTimeout(searchTimer);
  conversationSearch.value = "";
  showDateGroups();
}

// A search result's link ends in #message-<id>: show that message when it is on the page.
function showLinkedMessage() {
  const found = /^#message-(\d+)$/.exec(location.hash);
  const article = found && findArticle(toId(found[1]));
  if (!article) return;
  article.classList.add("linked-message");
  article.scrollIntoView({ block: "center" });
}

function initSidebar() {
  conversationList.addEventListener("click", onConversationListClick);
  conversationSearch.addEventListener("input", onSearchInput);
  conversationSearch.addEventListener("keydown", onSearchKeydown);
  observeLoadMore();
  syncTimeZone();
  showLinkedMessage();
}

// ---------------------------------------------------------------- start

function init() {
  for (const article of messagesEl.querySelectorAll("article.message")) hydrateArticle(article);
  restoreDraft(); // see "session"
  updateStopButton();
  updateSendButton();
  scrollToBottom();
  composer.addEventListener("submit", onComposerSubmit);
  promptEl.addEventListener("keydown", onPromptKeydown);
  promptEl.addEventListener("input", updateSendButton);
  stopButton.addEventListener("click", onStopClick);
  messagesEl.addEventListener("click", onMessagesClick);
  noticeDismiss.addEventListener("click", hideNotice);
  initSettingsPanel();
  initAttachments();
  initSearchToggles();
  initPhoneAndTablet();
  initKeyboard();
  initSidebar();
  connect();
}

init();
