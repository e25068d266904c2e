// The recent-queries picker: the user's last 50 queries on the picked source, kept by the session
// service (GET /api/recent-queries), newest first. Picking one puts it into the editor.

const LABEL_CHARS = 90;

function label(sql) {
  const line = sql.replace(/\s+/g, " ").trim();
  return line.length > LABEL_CHARS ? line.slice(0, LABEL_CHARS - 1) + "…" : line;
}

export class RecentPicker {
  /** `select`: the picker element; `api`: the JSON client; `onPick(sql)`: what a pick does. */
  constructor(select, { api, onPick }) {
    this.select = select;
    this.api = api;
    this.queries = [];
    select.addEventListener("change", () => {
      const query = this.queries[Number(select.value)];
      select.value = "";
      if (query) onPick(query.sql);
    });
  }

  /** Reload the list for `source`; on failure the picker says so and stays usable. */
  async load(source) {
    let note = "";
    try {
      const reply = await this.api(`/api/recent-queries?source=${encodeURIComponent(source)}`);
      this.queries = reply.queries;
    } catch (error) {
      this.queries = [];
      note = ` (unavailable: ${error.message})`;
    }
    const head = new Option(this.queries.length ? `Recent queries (${this.queries.length})` : `No recent queries${note}`, "");
    const options = this.queries.map((q, i) => {
      const option = new Option(label(q.sql), String(i));
      option.title = `${new Date(q.at).toLocaleString()}\n${q.sql}`;
      return option;
    });
    this.select.replaceChildren(head, ...options);
    this.select.value = "";
    this.select.disabled = !this.queries.length;
  }
}
