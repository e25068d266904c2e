// The page: sign-in, then the chat with its conversation sidebar beside the SQL editor and its
// result grid, CSV download and chart. Performance marks (query-run, query-first-rows,
// query-done) time a query from Run to its first painted rows and its last row.
import "./csp.js"; // first: settings that keep libraries within the page's CSP
import { api, ApiError } from "./api.js";
import { devSignIn, googleSignIn, signOutOfGateway } from "./auth.js";
import { AuditView } from "./audit.js";
import { CHART_TYPES, columnKinds, defaultSpec, drawChart, pngBlob, svgMarkup } from "./chart.js";
import { ChatView, chatErrorText, createChat, messageText } from "./chat.js";
import { DatabasesPanel } from "./databases.js";
import { SqlEditor } from "./editor.js";
import { VirtualGrid } from "./grid.js";
import { runQuery } from "./query.js";
import { RecentPicker } from "./recent.js";
import { csvBlob, ResultStore } from "./results.js";
import { SchemaPanel } from "./schema_panel.js";

const $ = (id) => document.getElementById(id);
const number = (n) => n.toLocaleString("en");

const page = {
  config: null,
  sources: [],
  result: null,
  queryAbort: null,
  chat: null,
  chatRows: new Map(),
  conversationId: null,
  conversations: [],
  schemaCache: new Map(),
};

// --- sign-in ---------------------------------------------------------------------------------

function showSignIn() {
  $("loading").hidden = true;
  $("workspace").hidden = true;
  $("conversations").hidden = true;
  $("account").hidden = true;
  $("sign-in").hidden = false;
  const mode = page.config.auth_mode;
  $("dev-login").hidden = mode !== "dev";
  $("google-login").hidden = !(mode === "firebase" && page.config.firebase);
  const unavailable = $("sign-in-unavailable");
  unavailable.hidden = mode === "dev" || (mode === "firebase" && page.config.firebase);
  unavailable.textContent =
    mode === "firebase" ? "Google sign-in is not configured on this server (FIREBASE_WEB_CONFIG)." :
    mode === "oidc" ? "This server signs in with OIDC ID tokens, which this page cannot obtain: use an API client." :
    "Sign-in is turned off on this server (AUTH_MODE=off).";
  if (mode === "dev") $("login-email").focus();
}

async function signedIn(me) {
  $("sign-in").hidden = true;
  $("loading").hidden = true;
  $("account").hidden = false;
  $("account-name").textContent = `Signed in as ${me.user.name || me.user.email || me.user.uid}`;
  $("open-audit").hidden = !me.admin;
  $("workspace").hidden = false;
  $("conversations").hidden = false;
  $("no-model").hidden = Boolean(page.config.chat);
  $("chat-input").disabled = !page.config.chat;
  // The history is asked for only when the conversation has some: a new one would answer 404.
  await Promise.all([loadSources(), page.config.connections ? databases.load() : databases.off(), refreshConversations()]);
  const known = page.conversations.some((c) => c.id === me.conversation_id);
  await openConversation(me.conversation_id, { fresh: !known });
}

$("dev-login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  try {
    const groups = $("login-groups").value.split(",").map((g) => g.trim()).filter(Boolean);
    await signedIn(await devSignIn($("login-email").value, $("login-name").value, groups));
  } catch (error) {
    $("sign-in-error").textContent = error.message;
  }
});

$("google-sign-in").addEventListener("click", async () => {
  $("sign-in-error").textContent = "";
  try {
    await signedIn(await googleSignIn(page.config.firebase));
  } catch (error) {
    $("sign-in-error").textContent = error.message;
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await signOutOfGateway();
  } finally {
    window.location.assign("/");
  }
});

// --- SQL editor, results, CSV, chart -------------------------------------------------------------

const grid = new VirtualGrid($("result"), { label: "Query result" });
const editor = new SqlEditor($("editor"), { onRun: () => run(), label: "SQL query" });
grid.clear("Run a query to see its rows here.");
const recent = new RecentPicker($("recent"), { api, onPick: (sql) => { editor.text = sql; editor.focus(); } });
const schemaPanel = new SchemaPanel($("schema-panel"), { api, insert: (text) => editor.insert(text) });

// A database added in the Databases panel is picked at once (for the editor and the chat); removed, the default comes back.
const databases = new DatabasesPanel({
  onChange: (picked) => {
    page.schemaCache.clear();
    return loadSources(picked);
  },
});

async function loadSources(picked = null) {
  const select = $("source");
  try {
    const reply = await api("/api/sources");
    page.sources = reply.sources;
    const chosen = picked && reply.sources.some((s) => s.name === picked) ? picked : reply.default;
    select.replaceChildren(
      ...reply.sources.map((s) => {
        const details = [s.dialect, s.role ? `as role ${s.role}` : null, s.kind === "connection" ? "yours" : null].filter(Boolean).join(", ");
        const option = new Option(`${s.name}${details ? ` (${details})` : ""}`, s.name);
        option.selected = s.name === chosen;
        return option;
      }),
    );
  } catch (error) {
    $("query-error").textContent = `Sources: ${error.message}`;
  }
  await configureEditor();
}

async function configureEditor() {
  const name = $("source").value;
  const source = page.sources.find((s) => s.name === name);
  let schema = page.schemaCache.get(name);
  if (!schema) {
    try {
      schema = await api(`/api/schema?source=${encodeURIComponent(name)}`);
      page.schemaCache.set(name, schema);
    } catch {
      schema = null; // completion falls back to keywords
    }
  }
  editor.configure(source ? source.dialect : null, schema);
  recent.load(name);
  if ($("schema-panel").open) schemaPanel.show(name, schema);
}

$("schema-panel").addEventListener("toggle", () => {
  const name = $("source").value;
  if ($("schema-panel").open && schemaPanel.source !== name) {
    performance.mark("schema-open"); // bench.web: to schema-first-paint and schema-keys-loaded
    $("schema-panel").dataset.keysLoaded = "false";
    // Not fetched yet: configureEditor shows it when it arrives, since the panel is open.
    if (page.schemaCache.has(name)) schemaPanel.show(name, page.schemaCache.get(name));
  }
});

$("source").addEventListener("change", configureEditor);

const audit = new AuditView({
  section: $("audit"),
  workspace: $("workspace"),
  form: $("audit-filters"),
  table: $("audit-table"),
  status: $("audit-status"),
  error: $("audit-error"),
  csv: $("audit-csv"),
  fields: { user: $("audit-user"), source: $("audit-source"), kind: $("audit-kind"), since: $("audit-since") },
});
$("open-audit").addEventListener("click", () => audit.open());
$("close-audit").addEventListener("click", () => audit.close());
$("run").addEventListener("click", () => run());
$("cancel-query").addEventListener("click", () => page.queryAbort && page.queryAbort.abort());

function describe(store, running) {
  if (store.error) return `${running ? "Stopped" : "Failed"} after ${number(store.rowCount)} rows`;
  if (running) return `Receiving rows… ${number(store.rowCount)} so far`;
  const rows = `${number(store.rowCount)} row${store.rowCount === 1 ? "" : "s"}`;
  return store.truncated ? `${rows}. Truncated: the result had more rows than the server returns (QUERY_MAX_ROWS).` : rows;
}

function showResult(store, { running }) {
  page.result = store;
  $("query-status").textContent = describe(store, running);
  $("query-error").textContent = store.error || "";
  $("download-csv").disabled = running || store.rowCount === 0;
  if (!running) fillChartControls(store);
}

async function run() {
  const sql = editor.text.trim();
  if (!sql) {
    $("query-error").textContent = "Write a query first.";
    return;
  }
  if (page.queryAbort) page.queryAbort.abort();
  const abort = new AbortController();
  page.queryAbort = abort;
  performance.clearMarks();
  performance.mark("query-run");
  $("query-error").textContent = "";
  $("query-status").textContent = "Running…";
  $("run").disabled = true;
  $("cancel-query").disabled = false;
  $("download-csv").disabled = true;
  let shown = null;
  let lastStatus = 0;
  try {
    const store = await runQuery({
      sql,
      source: $("source").value,
      signal: abort.signal,
      onUpdate: (current) => {
        if (shown !== current && current.rowCount > 0) {
          shown = current;
          grid.onPaint = () => performance.mark("query-first-rows");
          grid.show(current);
        } else if (shown) {
          grid.refresh();
        }
        const now = performance.now();
        if (now - lastStatus > 200) {
          lastStatus = now;
          showResult(current, { running: true });
        }
      },
    });
    performance.mark("query-done");
    recent.load($("source").value);
    if (shown !== store) grid.show(store);
    grid.refresh();
    showResult(store, { running: false });
    if (store.rowCount === 0 && !store.error) grid.clear("The query returned no rows.");
  } catch (error) {
    if (error.name === "AbortError") {
      $("query-status").textContent = "Cancelled.";
    } else {
      $("query-error").textContent = error instanceof ApiError ? error.message : `The query stream failed: ${error.message}`;
      $("query-status").textContent = "";
    }
  } finally {
    if (page.queryAbort === abort) page.queryAbort = null;
    $("run").disabled = false;
    $("cancel-query").disabled = true;
  }
}

$("download-csv").addEventListener("click", () => page.result && download(csvBlob(page.result), "result.csv"));

function fillChartControls(store) {
  const x = $("chart-x");
  const y = $("chart-y");
  const kinds = columnKinds(store);
  const names = kinds.map((_, c) => (store.columns[c] ? store.columns[c].name : `column ${c + 1}`));
  x.replaceChildren(...names.map((name) => new Option(name, name)));
  y.replaceChildren(...names.flatMap((name, c) => (kinds[c] === "number" ? [new Option(name, name)] : [])));
  const spec = defaultSpec(store);
  x.value = spec.x || "";
  if (spec.y) y.value = spec.y;
  $("chart-type").value = spec.type;
  x.disabled = names.length === 0;
  y.disabled = !spec.y;
  $("chart-type").disabled = !spec.y;
  redrawChart();
}

function redrawChart() {
  const chart = $("chart");
  const y = $("chart-y");
  let svg = null;
  if (!page.result || y.disabled || y.value === "") {
    chart.replaceChildren();
    if (page.result) {
      const note = document.createElement("p");
      note.className = "hint";
      note.textContent = "No numeric column to chart.";
      chart.append(note);
    }
  } else {
    performance.mark("chart-start");
    svg = drawChart(chart, page.result, { type: $("chart-type").value, x: $("chart-x").value, y: y.value, title: "" });
    performance.measure("chart-draw", "chart-start"); // read by bench.web
  }
  page.chartSvg = svg;
  $("chart-png").disabled = !svg;
  $("chart-svg").disabled = !svg;
}

for (const id of ["chart-type", "chart-x", "chart-y"]) $(id).addEventListener("change", redrawChart);

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

$("chart-svg").addEventListener("click", () => page.chartSvg && download(new Blob([svgMarkup(page.chartSvg)], { type: "image/svg+xml" }), "chart.svg"));
$("chart-png").addEventListener("click", async () => {
  if (!page.chartSvg) return;
  try {
    download(await pngBlob(page.chartSvg), "chart.png");
  } catch (error) {
    $("query-error").textContent = `PNG: ${error.message}`;
  }
});

/** A chart the model proposed (show_chart), drawn from the rows its query streamed to this tab. */
function drawProposedChart(container, spec) {
  const store = page.chatRows.get(spec.query);
  if (!store) {
    const note = document.createElement("p");
    note.className = "hint";
    note.textContent = "The rows of this chart are no longer in this tab: open its query in the editor and run it to chart it.";
    container.append(note);
    return;
  }
  if (!store.columns.length && spec.columns) store.columns = spec.columns;
  drawChart(container, store, { type: CHART_TYPES.includes(spec.type) ? spec.type : "bar", x: spec.x, y: spec.y, title: spec.title || "" });
}

// --- chat ----------------------------------------------------------------------------------------

async function copyMessage(message) {
  try {
    await navigator.clipboard.writeText(messageText(message));
    return true;
  } catch {
    return false;
  }
}

const chatView = new ChatView($("messages"), {
  openInEditor,
  drawChart: drawProposedChart,
  copy: copyMessage,
  regenerate: () => page.chat && page.chat.regenerate(),
  stop: () => page.chat && page.chat.stop(),
  rate: rateAnswer,
});

/** 👍 or 👎 on an answer of the open conversation: POST /api/feedback. */
function rateAnswer(message, rating) {
  return api("/api/feedback", { method: "POST", body: { conversation_id: page.chat.id, message_id: message.id, rating } });
}
let renderScheduled = false;

function chatChanged(chat) {
  if (chat !== page.chat || renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(() => {
    renderScheduled = false;
    const current = page.chat;
    const busy = current.status === "submitted" || current.status === "streaming";
    chatView.render(current.messages, busy);
    // Enabled only once a chat exists (the HTML starts it disabled): a Send pressed while the
    // conversations still load would otherwise be dropped with the question left in the box.
    $("chat-send").disabled = busy || !page.config.chat;
    $("chat-error").textContent = current.error ? chatErrorText(current.error) : "";
  });
}

function openInEditor(part) {
  editor.text = (part.input && part.input.sql) || "";
  const output = part.output || {};
  const received = page.chatRows.get(part.toolCallId);
  const store = received || new ResultStore();
  store.columns = output.columns || [];
  store.truncated = Boolean(output.truncated);
  store.done = true;
  if (received) {
    grid.show(store);
    showResult(store, { running: false });
  } else {
    page.result = null;
    grid.clear("The rows of this answer are no longer in this tab: press Run to fetch them again.");
    $("query-status").textContent = "";
    $("download-csv").disabled = true;
  }
  $("sql").scrollIntoView({ block: "start" });
  editor.focus();
}

async function openConversation(id, { fresh }) {
  let messages = [];
  if (!fresh && id) {
    try {
      const reply = await api(`/api/conversations/${encodeURIComponent(id)}`);
      messages = Array.isArray(reply) ? reply : reply.messages || [];
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) $("chat-error").textContent = `History: ${error.message}`;
    }
  }
  if (page.chat) page.chat.stop();
  page.conversationId = id;
  page.chatRows = new Map();
  const chat = createChat({
    id: id || undefined,
    messages,
    source: () => $("source").value,
    rows: page.chatRows,
    onChange: chatChanged,
    onFinish: () => refreshConversations(),
  });
  page.chat = chat;
  chatView.reset();
  chatChanged(chat);
  markCurrentConversation();
}

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !page.chat) return;
  input.value = "";
  $("chat-error").textContent = "";
  await page.chat.sendMessage({ text });
});

$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});


// --- conversations sidebar -----------------------------------------------------------------------

async function refreshConversations() {
  try {
    const reply = await api("/api/conversations");
    page.conversations = Array.isArray(reply) ? reply : reply.conversations || reply.items || [];
  } catch {
    page.conversations = [];
  }
  drawConversations();
}

function drawConversations() {
  const list = $("conversation-list");
  list.replaceChildren(...page.conversations.map(conversationItem));
  markCurrentConversation();
}

function conversationItem(conversation) {
  const item = document.createElement("li");
  item.dataset.id = conversation.id;
  const title = conversation.title || "Untitled";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.textContent = title;
  open.title = title;
  open.addEventListener("click", () => openConversation(conversation.id, { fresh: false }));
  const rename = document.createElement("button");
  rename.type = "button";
  rename.textContent = "Rename";
  rename.setAttribute("aria-label", `Rename ${title}`);
  rename.addEventListener("click", () => renameForm(item, conversation));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete ${title}`);
  remove.addEventListener("click", () => deleteConversation(conversation));
  item.append(open, rename, remove);
  return item;
}

function renameForm(item, conversation) {
  const form = document.createElement("form");
  const label = document.createElement("label");
  const inputId = `rename-${conversation.id}`;
  label.htmlFor = inputId;
  label.textContent = "New title";
  label.className = "hint";
  const input = document.createElement("input");
  input.id = inputId;
  input.value = conversation.title || "";
  input.required = true;
  input.maxLength = 200;
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", drawConversations);
  form.append(label, input, save, cancel);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(`/api/conversations/${encodeURIComponent(conversation.id)}`, { method: "PATCH", body: { title: input.value } });
    } catch (error) {
      $("chat-error").textContent = `Rename: ${error.message}`;
    }
    await refreshConversations();
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") drawConversations();
  });
  item.replaceChildren(form);
  input.focus();
  input.select();
}

async function deleteConversation(conversation) {
  try {
    await api(`/api/conversations/${encodeURIComponent(conversation.id)}`, { method: "DELETE" });
  } catch (error) {
    $("chat-error").textContent = `Delete: ${error.message}`;
  }
  if (conversation.id === page.conversationId) await newConversation();
  await refreshConversations();
  $("new-conversation").focus();
}

async function newConversation() {
  try {
    const reply = await api("/api/conversations", { method: "POST", body: {} });
    await openConversation(reply.conversation_id, { fresh: true });
  } catch (error) {
    $("chat-error").textContent = `New conversation: ${error.message}`;
  }
}

function markCurrentConversation() {
  for (const item of $("conversation-list").children) {
    const open = item.querySelector(".open");
    if (open) open.setAttribute("aria-current", String(item.dataset.id === page.conversationId));
  }
}

$("new-conversation").addEventListener("click", async () => {
  await newConversation();
  await refreshConversations();
  $("chat-input").focus();
});

// --- start ------------------------------------------------------------------------------------

async function start() {
  page.config = await api("/auth/config");
  if (!page.config.signed_in) {
    showSignIn();
    return;
  }
  try {
    await signedIn(await api("/api/me"));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) showSignIn();
    else {
      $("loading").textContent = `The server did not answer: ${error.message}`;
    }
  }
}

start();
