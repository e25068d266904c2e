// The schema panel: the source's tables from /api/schema, a search over them, the columns and keys
// of the selected table, and an ER diagram of its neighbourhood (the tables it references and
// those that reference it, MAX_NEIGHBOURS at most) laid out by dagre. Only the neighbourhood is
// drawn, and the list shows MAX_LISTED matches, so that 500 tables stay as quick as 5.
//
// The overview has no foreign keys: details (with them) are fetched in batches of DETAIL_BATCH
// tables after the list is painted, and the diagram is redrawn as they arrive.
import { graphlib, layout } from "@dagrejs/dagre";

const NS = "http://www.w3.org/2000/svg";
const MAX_LISTED = 100;
const MAX_NEIGHBOURS = 24;
const DETAIL_BATCH = 50;
const NODE_WIDTH = 170;
const ROW = 15;
const MAX_NODE_ROWS = 8;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The foreign-key edges of the known details: [{from, to, columns, references}]. */
function edgesOf(details) {
  const edges = [];
  for (const table of details.values()) {
    for (const fk of table.foreign_keys || []) edges.push({ from: table.name, to: fk.references.table, columns: fk.columns, references: fk.references.columns });
  }
  return edges;
}

export class SchemaPanel {
  /**
   * `root`: the panel's element (holding #schema-search, #schema-status, #schema-tables, #schema-detail, #schema-diagram);
   * `api`: the JSON client; `insert(text)`: puts a name into the editor.
   */
  constructor(root, { api, insert }) {
    this.root = root;
    this.api = api;
    this.insert = insert;
    this.search = root.querySelector("#schema-search");
    this.status = root.querySelector("#schema-status");
    this.list = root.querySelector("#schema-tables");
    this.detail = root.querySelector("#schema-detail");
    this.diagram = root.querySelector("#schema-diagram");
    this.source = null;
    this.tables = [];
    this.byName = new Map();
    this.details = new Map();
    this.selected = null;
    this.loading = 0; // a token: a newer load makes older batches stop
    this.search.addEventListener("input", () => this.drawList());
  }

  /** Show `source`'s tables from `overview` (an /api/schema reply), then fetch their details in the background. */
  show(source, overview) {
    this.source = source;
    this.tables = (overview && overview.tables) || [];
    this.byName = new Map(this.tables.map((t) => [t.name, t]));
    this.details = new Map();
    this.selected = null;
    this.root.dataset.keysLoaded = "false";
    this.detail.replaceChildren();
    this.diagram.replaceChildren();
    this.drawList();
    performance.mark("schema-first-paint");
    this.fetchDetails(++this.loading, overview && overview.truncated ? overview.note : "");
  }

  async fetchDetails(token, note) {
    const names = this.tables.map((t) => t.name);
    for (let start = 0; start < names.length; start += DETAIL_BATCH) {
      const batch = names.slice(start, start + DETAIL_BATCH);
      let reply;
      try {
        reply = await this.api(`/api/schema?source=${encodeURIComponent(this.source)}&tables=${batch.map(encodeURIComponent).join(",")}`);
      } catch (error) {
        if (token === this.loading) this.status.textContent = `Foreign keys: ${error.message}`;
        return;
      }
      if (token !== this.loading) return;
      for (const table of reply.tables || []) this.details.set(table.name, table);
      if (this.selected) this.drawSelected();
    }
    if (token === this.loading) {
      performance.mark("schema-keys-loaded");
      this.root.dataset.keysLoaded = "true";
      this.drawStatus(note);
      if (this.selected) this.drawSelected();
    }
  }

  matches() {
    const needle = this.search.value.trim().toLowerCase();
    return needle ? this.tables.filter((t) => t.name.toLowerCase().includes(needle)) : this.tables;
  }

  drawStatus(note = "") {
    const found = this.matches().length;
    const shown = Math.min(found, MAX_LISTED);
    const total = this.tables.length;
    let text = this.search.value.trim() ? `${found} of ${total} tables match` : `${total} table${total === 1 ? "" : "s"}`;
    if (found > shown) text += `; the first ${shown} are listed, search to narrow`;
    this.status.textContent = note ? `${text}. ${note}` : text;
  }

  drawList() {
    const items = this.matches()
      .slice(0, MAX_LISTED)
      .map((table) => {
        const item = el("li");
        const pick = el("button", "", table.name);
        pick.type = "button";
        pick.setAttribute("aria-pressed", String(table.name === this.selected));
        pick.addEventListener("click", () => this.select(table.name));
        item.append(pick);
        return item;
      });
    this.list.replaceChildren(...items);
    this.drawStatus();
  }

  select(name) {
    this.selected = name;
    for (const button of this.list.querySelectorAll("button")) button.setAttribute("aria-pressed", String(button.textContent === name));
    this.drawSelected();
  }

  drawSelected() {
    const name = this.selected;
    const table = this.details.get(name) || this.byName.get(name);
    if (!table) return;
    this.drawDetail(table);
    this.drawDiagram(name);
  }

  drawDetail(table) {
    const heading = el("p", "schema-table");
    const insertTable = el("button", "insert", table.name);
    insertTable.type = "button";
    insertTable.setAttribute("aria-label", `Insert table ${table.name}`);
    insertTable.addEventListener("click", () => this.insert(table.name));
    heading.append(insertTable);
    const fks = new Map();
    for (const fk of table.foreign_keys || []) fk.columns.forEach((c, i) => fks.set(c, `${fk.references.table}.${fk.references.columns[i] ?? ""}`));
    const columns = el("ul", "schema-columns");
    for (const column of table.columns || []) {
      const item = el("li");
      const insert = el("button", "insert", column.name);
      insert.type = "button";
      insert.setAttribute("aria-label", `Insert column ${column.name}`);
      insert.addEventListener("click", () => this.insert(column.name));
      const keys = [column.primary_key ? "PK" : "", fks.has(column.name) ? `FK → ${fks.get(column.name)}` : ""].filter(Boolean).join(", ");
      item.append(insert, el("span", "hint", ` ${column.type}${keys ? ` (${keys})` : ""}`));
      columns.append(item);
    }
    this.detail.replaceChildren(heading, columns);
  }

  /** The selected table, the tables it references and those referencing it (MAX_NEIGHBOURS at most), laid out by dagre. */
  drawDiagram(name) {
    const edges = edgesOf(this.details).filter((e) => e.from === name || e.to === name);
    const neighbours = [];
    for (const e of edges) {
      const other = e.from === name ? e.to : e.from;
      if (other !== name && !neighbours.includes(other)) neighbours.push(other);
    }
    const shown = new Set([name, ...neighbours.slice(0, MAX_NEIGHBOURS)]);
    const graph = new graphlib.Graph({ multigraph: true });
    graph.setGraph({ rankdir: "LR", nodesep: 16, ranksep: 60, marginx: 8, marginy: 8 });
    graph.setDefaultEdgeLabel(() => ({}));
    const rowsOf = (table) => {
      const info = this.details.get(table) || this.byName.get(table) || { columns: [] };
      const keyed = new Set(edges.filter((e) => e.from === table).flatMap((e) => e.columns));
      const columns = (info.columns || []).filter((c) => c.primary_key || keyed.has(c.name));
      return columns.slice(0, MAX_NODE_ROWS);
    };
    for (const table of shown) graph.setNode(table, { width: NODE_WIDTH, height: ROW * (1.6 + rowsOf(table).length), rows: rowsOf(table) });
    edges.forEach((e, i) => {
      if (shown.has(e.from) && shown.has(e.to)) graph.setEdge(e.from, e.to, { columns: e.columns }, `fk${i}`);
    });
    layout(graph);
    const size = graph.graph();
    const root = svg("svg", {
      class: "er",
      viewBox: `0 0 ${Math.ceil(size.width)} ${Math.ceil(size.height)}`,
      width: Math.ceil(size.width),
      height: Math.ceil(size.height),
      role: "img",
      "aria-label": `ER diagram of ${name}: ${shown.size} table${shown.size === 1 ? "" : "s"}, ${graph.edgeCount()} foreign key${graph.edgeCount() === 1 ? "" : "s"}`,
    });
    const defs = svg("defs", {});
    const marker = svg("marker", { id: "er-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "er-arrowhead" }));
    defs.append(marker);
    root.append(defs);
    for (const edge of graph.edges()) {
      const points = graph.edge(edge).points;
      const d = points.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
      const path = svg("path", { d, class: "er-edge", "marker-end": "url(#er-arrow)" });
      path.append(svg("title", {}, `${edge.v} (${graph.edge(edge).columns.join(", ")}) → ${edge.w}`));
      root.append(path);
    }
    for (const table of graph.nodes()) {
      const node = graph.node(table);
      const x = node.x - node.width / 2;
      const y = node.y - node.height / 2;
      const group = svg("g", { class: table === name ? "er-node selected" : "er-node", "data-table": table });
      group.append(svg("rect", { x, y, width: node.width, height: node.height, rx: 4 }));
      group.append(svg("text", { x: x + 6, y: y + ROW, class: "er-name" }, table));
      node.rows.forEach((column, i) => {
        group.append(svg("text", { x: x + 6, y: y + ROW * (2.2 + i), class: "er-column" }, `${column.primary_key ? "PK" : "FK"} ${column.name}`));
      });
      group.addEventListener("click", () => this.select(table));
      root.append(group);
    }
    const more = neighbours.length - (shown.size - 1);
    const children = [root];
    if (more > 0) children.push(el("p", "hint", `${more} more related table${more === 1 ? "" : "s"} not drawn; search for them to see their own neighbourhood.`));
    if (this.root.dataset.keysLoaded !== "true") children.push(el("p", "hint", "Loading foreign keys…"));
    this.diagram.replaceChildren(...children);
  }
}
