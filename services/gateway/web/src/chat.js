// The chat: the AI SDK's own client (AbstractChat from `ai`, with DefaultChatTransport) over
// POST /api/chat, and a small renderer of its messages. The rows of each execute_query call come
// as transient data-query-rows parts, which the SDK hands to onData and does not keep: they are
// collected here per tool call, so that "Open in editor" shows them without another request.
// Every tool card ends in a final state: done, failed, or interrupted when the turn ended first.
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

function button(text, onClick, label) {
  const node = el("button", "", text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

const plural = (n, word) => `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;

/** The name of a tool part's tool, or null for other parts. */
export function toolNameOf(part) {
  if (part.type === "dynamic-tool") return part.toolName;
  return part.type.startsWith("tool-") ? part.type.slice(5) : null;
}

function doneText(name, out) {
  if (name === "execute_query") return `${plural(out.row_count, "row")}${out.truncated ? " (truncated)" : ""}`;
  if (name === "describe_schema") return `Described ${plural((out.tables || []).length, "table")}${out.truncated ? " (cut)" : ""}`;
  if (name === "show_chart") return `Chart: ${out.title || `${out.y} by ${out.x}`}`;
  if (name === "get_recent_queries") return `${plural((out.queries || []).length, "recent query")}`.replace("querys", "queries");
  return "Done";
}

/** The state line of a tool card. `live` is false once the turn has ended: a call still open then was interrupted. */
export function toolState(part, name, live) {
  if (part.state === "output-available") {
    const out = part.output || {};
    const receiving = part.preliminary || (name === "execute_query" && out.row_count === undefined);
    if (!receiving) return { text: doneText(name, out), className: "done" };
    if (live) return { text: "Receiving rows…", className: "" };
    return { text: "Interrupted: the answer ended before the result was complete", className: "failed" };
  }
  if (part.state === "output-error") return { text: `Failed: ${part.errorText || "error"}`, className: "failed" };
  if (!live) return { text: "Interrupted: the answer ended before this call finished", className: "failed" };
  return { text: part.state === "input-streaming" ? "Writing the call…" : "Running…", className: "" };
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

function stateLine(part, name, live) {
  const state = toolState(part, name, live);
  return el("p", `state ${state.className}`, state.text);
}

function queryCard(part, actions, live) {
  const card = el("article", "tool-card");
  const sqlText = (part.input && part.input.sql) || "";
  card.setAttribute("aria-label", "execute_query");
  card.append(el("p", "who", "execute_query"));
  const pre = el("pre");
  pre.append(el("code", "", sqlText));
  card.append(pre, stateLine(part, "execute_query", live));
  if (part.state === "output-available" && part.output && part.output.columns) {
    card.append(previewTable(part.output));
    const open = button("Open in editor", () => actions.openInEditor(part));
    open.disabled = part.preliminary === true;
    card.append(open);
  }
  return card;
}

function schemaCard(part, live) {
  const card = el("article", "tool-card");
  card.setAttribute("aria-label", "describe_schema");
  card.append(el("p", "who", "describe_schema"), stateLine(part, "describe_schema", live));
  if (part.state === "output-available" && part.output) {
    const list = el("ul", "schema-tables");
    for (const table of part.output.tables || []) {
      const columns = (table.columns || []).map((c) => c.name).join(", ");
      const item = el("li");
      item.append(el("code", "", table.name), document.createTextNode(columns ? `: ${columns}` : ""));
      list.append(item);
    }
    card.append(list);
  }
  return card;
}

function chartCard(part, actions, live) {
  const card = el("article", "tool-card");
  card.setAttribute("aria-label", "show_chart");
  card.append(el("p", "who", "show_chart"), stateLine(part, "show_chart", live));
  if (part.state === "output-available" && part.output) {
    const holder = el("div", "chart");
    card.append(holder);
    actions.drawChart(holder, part.output);
  }
  return card;
}

function otherToolCard(part, name, live) {
  const card = el("details", "tool-card");
  const summary = el("summary", "", `${name}: ${toolState(part, name, live).text}`);
  const pre = el("pre");
  pre.textContent = JSON.stringify(part.state === "output-available" ? part.output : part.input, null, 1) || "";
  card.append(summary, pre);
  return card;
}

function renderPart(part, message, actions, index, openDetails, live) {
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
  const toolName = toolNameOf(part);
  if (toolName === "execute_query") return queryCard(part, actions, live);
  if (toolName === "describe_schema") return schemaCard(part, live);
  if (toolName === "show_chart") return chartCard(part, actions, live);
  if (toolName) {
    const card = otherToolCard(part, toolName, live);
    card.open = openDetails.has(index);
    card.dataset.index = String(index);
    return card;
  }
  return null;
}

/** A message as plain text for the clipboard: its text, and the SQL of its queries. */
export function messageText(message) {
  const out = [];
  for (const part of message.parts) {
    if (part.type === "text") out.push(part.text);
    else if (toolNameOf(part) === "execute_query" && part.input && part.input.sql) out.push(part.input.sql);
  }
  return out.join("\n\n");
}

/** Renders the chat's messages into `container`, redrawing only the messages that changed.
 *
 * `actions`: openInEditor(part), drawChart(container, spec), copy(message), regenerate(), stop(), and
 * rate(message, "up" | "down"), which posts a rating and resolves to POST /api/feedback's reply (docs/accuracy.md).
 */
export class ChatView {
  constructor(container, actions) {
    this.container = container;
    this.actions = actions;
    this.rated = new Map(); // message id -> what the rating did, kept across redraws
    this.drawn = new Map(); // message id -> {message, live, node}
    this.bar = el("div", "answer-actions");
    this.bar.setAttribute("role", "group");
    this.bar.setAttribute("aria-label", "Last answer");
    this.stopButton = button("Stop", () => this.actions.stop());
    this.regenerateButton = button("Regenerate", () => this.actions.regenerate());
    this.bar.append(this.stopButton, this.regenerateButton);
  }

  reset() {
    this.drawn.clear();
    this.container.replaceChildren();
  }

  /** Draw `messages`; `busy` while the chat is submitting or streaming (the last message is then live). */
  render(messages, busy = false) {
    const stick = this.container.scrollHeight - this.container.scrollTop - this.container.clientHeight < 40;
    const keep = new Set(messages.map((m) => m.id));
    for (const [id, entry] of this.drawn) {
      if (!keep.has(id)) {
        entry.node.remove();
        this.drawn.delete(id);
      }
    }
    let previous = null;
    messages.forEach((message, i) => {
      const live = busy && i === messages.length - 1;
      let entry = this.drawn.get(message.id);
      if (!entry || entry.message !== message || entry.live !== live) {
        const node = this._message(message, entry ? entry.node : null, live);
        if (entry) entry.node.replaceWith(node);
        entry = { message, live, node };
        this.drawn.set(message.id, entry);
      }
      const expected = previous ? previous.nextElementSibling : this.container.firstElementChild;
      if (expected !== entry.node) {
        if (previous) previous.after(entry.node);
        else this.container.prepend(entry.node);
      }
      previous = entry.node;
    });
    // Stop and regenerate sit under the last answer: stop while it streams, regenerate once it ended.
    const last = messages[messages.length - 1];
    if (last && (busy || last.role === "assistant")) {
      this.stopButton.hidden = !busy;
      this.regenerateButton.hidden = busy;
      if (previous.nextElementSibling !== this.bar) previous.after(this.bar);
    } else {
      this.bar.remove();
    }
    if (stick) this.container.scrollTop = this.container.scrollHeight;
  }

  _message(message, old, live) {
    const openDetails = new Set();
    if (old) for (const details of old.querySelectorAll("details[open]")) openDetails.add(Number(details.dataset.index));
    const node = el("article", `message ${message.role}`);
    const who = message.role === "user" ? "You" : "DB Genie";
    node.setAttribute("aria-label", message.role === "user" ? "You" : "Assistant");
    const header = el("div", "message-head");
    header.append(el("p", "who", who));
    if (!live) {
      const copy = button("Copy", async () => {
        copy.textContent = (await this.actions.copy(message)) ? "Copied" : "Copy failed";
      });
      copy.className = "copy";
      header.append(copy);
    }
    node.append(header);
    message.parts.forEach((part, index) => {
      const child = renderPart(part, message, this.actions, index, openDetails, live);
      if (child) node.append(child);
    });
    // Once the answer is finished (its metadata came with the stream's end, or from history).
    if (message.role === "assistant" && this.actions.rate && message.metadata && message.metadata.steps !== undefined) node.append(this._feedback(message));
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
          const reply = await this.actions.rate(message, rating);
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
