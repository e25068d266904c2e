// The page: sign-in, then the chat with its conversation sidebar beside the SQL editor and its
// result grid, CSV download and chart. Performance marks (query-run, query-first-rows,
// query-done) time a query from Run to its first painted rows and its last row.
import "./csp.js"; // first: settings that keep libraries within the page's CSP
import { api, ApiError } from "./api.js";
import { devSignIn, googleSignIn, signOutOfGateway } from "./auth.js";
import { AuditView } from "./audit.js";
import { drawChart } from "./chart.js";
import { ChatView, chatErrorText, createChat } from "./chat.js";
import { SqlEditor } from "./editor.js";
import { VirtualGrid } from "./grid.js";
import { runQuery } from "./query.js";
import { csvBlob, ResultStore } from "./results.js";

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
  await Promise.all([loadSources(), openConversation(me.conversation_id, { fresh: false })]);
  refreshConversations();
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

async function loadSources() {
  const select = $("source");
  try {
    const reply = await api("/api/sources");
    page.sources = reply.sources;
    select.replaceChildren(
      ...reply.sources.map((s) => {
        const details = [s.dialect, s.role ? `as role ${s.role}` : null].filter(Boolean).join(", ");
        const option = new Option(`${s.name}${details ? ` (${details})` : ""}`, s.name);
        option.selected = s.name === reply.default;
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
}

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

$("download-csv").addEventListener("click", () => {
  if (!page.result) return;
  const url = URL.createObjectURL(csvBlob(page.result));
  const link = document.createElement("a");
  link.href = url;
  link.download = "result.csv";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
});

function fillChartControls(store) {
  const x = $("chart-x");
  const y = $("chart-y");
  const width = store.width;
  const names = Array.from({ length: width }, (_, c) => (store.columns[c] ? store.columns[c].name : `column ${c + 1}`));
  const numeric = names.map((_, c) => store.isNumeric(c));
  x.replaceChildren(...names.map((name, c) => new Option(name, String(c))));
  y.replaceChildren(...names.flatMap((name, c) => (numeric[c] ? [new Option(name, String(c))] : [])));
  const firstNumeric = numeric.indexOf(true);
  const otherNumeric = numeric.indexOf(true, firstNumeric + 1);
  if (otherNumeric >= 0) {
    x.value = String(firstNumeric);
    y.value = String(otherNumeric);
  } else if (firstNumeric >= 0) {
    x.value = String(firstNumeric === 0 && width > 1 ? 1 : 0);
    y.value = String(firstNumeric);
  }
  x.disabled = width === 0;
  y.disabled = firstNumeric < 0;
  redrawChart();
}

function redrawChart() {
  const y = $("chart-y");
  const chart = $("chart");
  if (!page.result || y.disabled || y.value === "") {
    chart.replaceChildren();
    const note = document.createElement("p");
    note.className = "hint";
    note.textContent = page.result ? "No numeric column to chart." : "";
    chart.append(note);
    return;
  }
  drawChart(chart, page.result, Number($("chart-x").value), Number(y.value));
}

$("chart-x").addEventListener("change", redrawChart);
$("chart-y").addEventListener("change", redrawChart);

// --- chat ----------------------------------------------------------------------------------------

const chatView = new ChatView($("messages"), openInEditor);
let renderScheduled = false;

function chatChanged(chat) {
  if (chat !== page.chat || renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(() => {
    renderScheduled = false;
    const current = page.chat;
    chatView.render(current.messages);
    const busy = current.status === "submitted" || current.status === "streaming";
    $("chat-stop").disabled = !busy;
    $("chat-send").disabled = busy;
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

$("chat-stop").addEventListener("click", () => page.chat && page.chat.stop());

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
