// The admins' audit view (GET /api/audit, docs/access.md): filters, a table of events, and CSV.
import { api } from "./api.js";
import { csvField } from "./results.js";

const COLUMNS = ["time", "kind", "user_id", "email", "source", "role", "outcome", "reason", "rows", "bytes", "duration_ms", "sql", "conversation_id", "model", "turn", "request_id"];

function cellText(event, name) {
  const value = event[name];
  if (value === null || value === undefined) return "";
  if (name === "time") return new Date(value * 1000).toISOString().replace("T", " ").slice(0, 19);
  return String(value);
}

export class AuditView {
  constructor(elements) {
    this.el = elements;
    this.events = [];
    const head = this.el.table.tHead.rows[0];
    head.replaceChildren(...COLUMNS.map((name) => Object.assign(document.createElement("th"), { scope: "col", textContent: name })));
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
    this.el.csv.addEventListener("click", () => this.download());
  }

  open() {
    this.el.workspace.hidden = true;
    this.el.section.hidden = false;
    this.el.fields.user.focus();
    this.load();
  }

  close() {
    this.el.section.hidden = true;
    this.el.workspace.hidden = false;
  }

  async load() {
    const query = new URLSearchParams();
    for (const [name, input] of Object.entries(this.el.fields)) {
      const value = input.value.trim();
      if (!value) continue;
      query.set(name, name === "since" ? new Date(value).toISOString() : value);
    }
    this.el.error.textContent = "";
    this.el.status.textContent = "Loading…";
    try {
      const reply = await api(`/api/audit?${query}`);
      this.events = reply.events.slice().reverse(); // newest first
      this.render();
    } catch (error) {
      this.events = [];
      this.render();
      this.el.error.textContent = error.message;
    }
  }

  render() {
    const body = this.el.table.tBodies[0];
    body.replaceChildren(
      ...this.events.map((event) => {
        const row = document.createElement("tr");
        row.replaceChildren(...COLUMNS.map((name) => Object.assign(document.createElement("td"), { textContent: cellText(event, name) })));
        return row;
      }),
    );
    this.el.status.textContent = `${this.events.length.toLocaleString("en")} event${this.events.length === 1 ? "" : "s"}`;
    this.el.csv.disabled = this.events.length === 0;
  }

  download() {
    const lines = [COLUMNS.join(","), ...this.events.map((event) => COLUMNS.map((name) => csvField(cellText(event, name))).join(","))];
    const url = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv;charset=utf-8" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = "audit.csv";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
}
