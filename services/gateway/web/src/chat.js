// The chat: the AI SDK's own client (AbstractChat from `ai`, with DefaultChatTransport) over
// POST /api/chat, and a small renderer of its messages. The rows of each execute_query call come
// as transient data-query-rows parts, which the SDK hands to onData and does not keep: they are
// collected here per tool call, so that "Open in editor" shows them without another request.
import { AbstractChat, DefaultChatTransport } from "ai";
import { renderMarkdown } from "./markdown.js";
import { ResultStore } from "./results.js";

/** The ChatState the SDK writes to; every change schedules one render. */
class State {
  constructor(onChange) {
    this.onChange = onChange;
    this._messages = [];
    this._status = "ready";
    this._error = undefined;
  }
  get messages() { return this._messages; }
  set messages(value) { this._messages = value; this.onChange(); }
  get status() { return this._status; }
  set status(value) { this._status = value; this.onChange(); }
  get error() { return this._error; }
  set error(value) { this._error = value; this.onChange(); }
  pushMessage(message) { this._messages = this._messages.concat(message); this.onChange(); }
  popMessage() { this._messages = this._messages.slice(0, -1); this.onChange(); }
  replaceMessage(index, message) {
    this._messages = [...this._messages.slice(0, index), this.snapshot(message), ...this._messages.slice(index + 1)];
    this.onChange();
  }
  snapshot(value) { return structuredClone(value); }
}

export class BrowserChat extends AbstractChat {
  constructor({ onChange, ...init }) {
    let self = null;
    const state = new State(() => self && onChange(self));
    super({ ...init, state });
    self = this;
  }
}

/** A Chat for conversation `id`; it sends only the new message, since the server keeps the history (docs/history.md). */
export function createChat({ id, messages, source, rows, onChange, onFinish }) {
  const transport = new DefaultChatTransport({
    api: "/api/chat",
    credentials: "same-origin",
    prepareSendMessagesRequest: ({ id: chatId, messages: all, trigger, messageId }) => ({
      body: { id: chatId, message: all[all.length - 1], trigger, messageId, source: source() || undefined },
    }),
  });
  const chat = new BrowserChat({
    id,
    transport,
    onChange,
    onFinish,
    onData: (part) => {
      if (part.type !== "data-query-rows") return;
      const { toolCallId, offset, rows: chunk } = part.data;
      let store = rows.get(toolCallId);
      if (!store) rows.set(toolCallId, (store = new ResultStore()));
      store.append(offset, chunk);
    },
  });
  if (messages && messages.length) chat.messages = messages;
  return chat;
}

/** The message of a failed chat request: the gateway's JSON error body, which the SDK hands over as text. */
export function chatErrorText(error) {
  try {
    const body = JSON.parse(error.message);
    if (body && body.error && body.error.message) return body.error.message;
  } catch {
    // not a JSON body: the SDK's own message
  }
  return error.message;
}

// --- rendering -------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const STATES = {
  "input-streaming": "Writing the query…",
  "input-available": "Running…",
  "output-error": "Failed",
};

function toolState(part) {
  if (part.state === "output-available") {
    const out = part.output || {};
    if (part.preliminary || out.row_count === undefined) return { text: "Receiving rows…", className: "" };
    const n = out.row_count;
    return { text: `${n.toLocaleString("en")} row${n === 1 ? "" : "s"}${out.truncated ? " (truncated)" : ""}`, className: "done" };
  }
  if (part.state === "output-error") return { text: `Failed: ${part.errorText || "error"}`, className: "failed" };
  return { text: STATES[part.state] || part.state, className: "" };
}

function previewTable(output) {
  const columns = (output && output.columns) || [];
  const preview = (output && output.preview) || [];
  const table = el("table");
  const caption = el("caption", "hint", `Preview (first ${preview.length} rows)`);
  const head = el("tr");
  for (const col of columns) {
    const th = el("th", "", col.name);
    th.scope = "col";
    head.append(th);
  }
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  for (const row of preview.slice(0, 5)) {
    const tr = el("tr");
    for (const cell of row) tr.append(el("td", cell === null ? "null" : "", cell === null ? "NULL" : typeof cell === "object" ? JSON.stringify(cell) : String(cell)));
    tbody.append(tr);
  }
  table.append(caption, thead, tbody);
  return table;
}

function queryCard(part, openInEditor) {
  const card = el("article", "tool-card");
  const sqlText = (part.input && part.input.sql) || "";
  card.setAttribute("aria-label", "execute_query");
  card.append(el("p", "who", "execute_query"));
  const pre = el("pre");
  pre.append(el("code", "", sqlText));
  card.append(pre);
  const state = toolState(part);
  card.append(el("p", `state ${state.className}`, state.text));
  if (part.state === "output-available" && part.output && part.output.columns) {
    card.append(previewTable(part.output));
    const open = el("button", "", "Open in editor");
    open.type = "button";
    open.disabled = part.preliminary === true;
    open.addEventListener("click", () => openInEditor(part));
    card.append(open);
  }
  return card;
}

function otherToolCard(part, name) {
  const card = el("details", "tool-card");
  const summary = el("summary", "", `${name}: ${toolState(part).text}`);
  const pre = el("pre");
  pre.textContent = JSON.stringify(part.state === "output-available" ? part.output : part.input, null, 1) || "";
  card.append(summary, pre);
  return card;
}

function renderPart(part, message, openInEditor, index, openDetails) {
  if (part.type === "text") {
    if (message.role === "user") return el("p", "", part.text);
    const div = el("div", "markdown");
    renderMarkdown(div, part.text);
    return div;
  }
  if (part.type === "reasoning") {
    const details = el("details", "reasoning");
    details.open = openDetails.has(index);
    details.dataset.index = String(index);
    details.append(el("summary", "", "Reasoning"), el("p", "", part.text));
    return details;
  }
  const toolName = part.type === "dynamic-tool" ? part.toolName : part.type.startsWith("tool-") ? part.type.slice(5) : null;
  if (toolName === "execute_query") return queryCard(part, openInEditor);
  if (toolName) {
    const card = otherToolCard(part, toolName);
    card.open = openDetails.has(index);
    card.dataset.index = String(index);
    return card;
  }
  return null;
}

/** Renders the chat's messages into `container`, redrawing only the messages that changed. */
export class ChatView {
  /** `onRate(message, "up" | "down")` posts a rating and resolves to POST /api/feedback's reply (docs/accuracy.md). */
  constructor(container, openInEditor, onRate = null) {
    this.container = container;
    this.openInEditor = openInEditor;
    this.onRate = onRate;
    this.drawn = new Map(); // message id -> {message, node}
    this.rated = new Map(); // message id -> what the rating did, kept across redraws
  }

  reset() {
    this.drawn.clear();
    this.container.replaceChildren();
  }

  render(messages) {
    const stick = this.container.scrollHeight - this.container.scrollTop - this.container.clientHeight < 40;
    const keep = new Set(messages.map((m) => m.id));
    for (const [id, entry] of this.drawn) {
      if (!keep.has(id)) {
        entry.node.remove();
        this.drawn.delete(id);
      }
    }
    let previous = null;
    for (const message of messages) {
      let entry = this.drawn.get(message.id);
      if (!entry || entry.message !== message) {
        const node = this._message(message, entry ? entry.node : null);
        if (entry) entry.node.replaceWith(node);
        entry = { message, node };
        this.drawn.set(message.id, entry);
      }
      const expected = previous ? previous.nextElementSibling : this.container.firstElementChild;
      if (expected !== entry.node) {
        if (previous) previous.after(entry.node);
        else this.container.prepend(entry.node);
      }
      previous = entry.node;
    }
    if (stick) this.container.scrollTop = this.container.scrollHeight;
  }

  _message(message, old) {
    const openDetails = new Set();
    if (old) for (const details of old.querySelectorAll("details[open]")) openDetails.add(Number(details.dataset.index));
    const node = el("article", `message ${message.role}`);
    node.setAttribute("aria-label", message.role === "user" ? "You" : "Assistant");
    node.append(el("p", "who", message.role === "user" ? "You" : "DB Genie"));
    message.parts.forEach((part, index) => {
      const child = renderPart(part, message, this.openInEditor, index, openDetails);
      if (child) node.append(child);
    });
    // Once the answer is finished (its metadata came with the stream's end, or from history).
    if (message.role === "assistant" && this.onRate && message.metadata && message.metadata.steps !== undefined) node.append(this._feedback(message));
    return node;
  }

  _feedback(message) {
    const row = el("div", "feedback");
    const status = el("span", "feedback-status", this.rated.get(message.id) || "");
    status.setAttribute("aria-live", "polite");
    const buttons = [["up", "👍", "Good answer"], ["down", "👎", "Bad answer"]].map(([rating, label, title]) => {
      const button = el("button", "feedback-button", label);
      button.type = "button";
      button.title = title;
      button.setAttribute("aria-label", title);
      button.disabled = this.rated.has(message.id);
      button.addEventListener("click", async () => {
        for (const b of buttons) b.disabled = true;
        try {
          const reply = await this.onRate(message, rating);
          const example = reply && reply.example;
          const text = !example ? "Thanks for the feedback." : example.status === "approved" ? "Thanks: this answer is now a verified example." : "Thanks: this answer is proposed as an example, pending approval.";
          this.rated.set(message.id, text);
          status.textContent = text;
        } catch (error) {
          status.textContent = `Feedback failed: ${error.message}`;
          for (const b of buttons) b.disabled = false;
        }
      });
      return button;
    });
    row.append(...buttons, status);
    return row;
  }
}
