// A virtualised result grid: only the rows in view (plus a few) exist in the DOM, whatever the
// row count. Past MAX_SCROLL_PX the scroll range is scaled, so a million rows still fit under
// the browsers' limits on an element's height. Keyboard: arrows, Page Up/Down, Home/End
// (first/last row) move the active row.

const ROW_PX = 24;
const MAX_SCROLL_PX = 6_000_000;
const OVERSCAN = 4;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class VirtualGrid {
  constructor(container, { label }) {
    this.container = container;
    this.label = label;
    this.store = null;
    this.active = 0;
    this.rendered = -1;
    this.scheduled = false;
    this.onPaint = null;
    this.root = null;
    this.resize = null;
  }

  /** Show `store` (a ResultStore); call refresh() as rows arrive. */
  show(store) {
    this.store = store;
    this.active = 0;
    this.container.replaceChildren();
    this.root = null;
    this.refresh();
  }

  clear(message) {
    this.store = null;
    this.root = null;
    if (this.resize) this.resize.disconnect();
    this.container.replaceChildren(el("p", "hint", message || ""));
  }

  _build() {
    const store = this.store;
    const width = store.width;
    const root = el("div", "grid");
    root.setAttribute("role", "grid");
    root.setAttribute("aria-label", this.label);
    root.setAttribute("aria-readonly", "true");
    root.tabIndex = 0;
    const template = `5.5rem repeat(${width}, minmax(8rem, 12rem))`;
    const head = el("div", "grid-row grid-head");
    head.setAttribute("role", "row");
    head.setAttribute("aria-rowindex", "1");
    head.style.gridTemplateColumns = template;
    const corner = el("span", "rownum", "#");
    corner.setAttribute("role", "columnheader");
    head.append(corner);
    for (let c = 0; c < width; c++) {
      const name = store.columns[c] ? store.columns[c].name : `column ${c + 1}`;
      const cell = el("span", "", name);
      cell.setAttribute("role", "columnheader");
      if (store.columns[c] && store.columns[c].type) cell.title = `${name} (${store.columns[c].type})`;
      head.append(cell);
    }
    const headGroup = el("div");
    headGroup.setAttribute("role", "rowgroup");
    headGroup.append(head);
    const spacer = el("div", "grid-spacer");
    spacer.setAttribute("role", "presentation");
    const body = el("div", "grid-body");
    body.setAttribute("role", "rowgroup");
    spacer.append(body);
    root.append(headGroup, spacer);
    root.addEventListener("scroll", () => this._schedule());
    root.addEventListener("keydown", (event) => this._key(event));
    this.container.replaceChildren(root);
    this.root = root;
    this.head = head;
    this.spacer = spacer;
    this.body = body;
    this.template = template;
    this.width = width;
    if (this.resize) this.resize.disconnect();
    this.resize = new ResizeObserver(() => this._schedule());
    this.resize.observe(root);
  }

  refresh() {
    const store = this.store;
    if (!store) return;
    if (!this.root) {
      if (store.width === 0 && store.rowCount === 0) return;
      this._build();
    }
    // Column names arrive with the first output, rows after: rebuild when the width changed.
    if (this.width !== store.width) this._build();
    this._schedule();
  }

  _schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this._render();
    });
  }

  get _rows() {
    return this.store ? this.store.rowCount : 0;
  }

  _geometry() {
    const rows = this._rows;
    const viewport = Math.max(ROW_PX, this.root.clientHeight - ROW_PX);
    const visible = Math.ceil(viewport / ROW_PX);
    const full = rows * ROW_PX;
    const height = Math.min(full, MAX_SCROLL_PX);
    const scaled = full > MAX_SCROLL_PX;
    return { rows, viewport, visible, height, scaled };
  }

  _firstRow(g) {
    const top = this.root.scrollTop;
    if (!g.scaled) return Math.floor(top / ROW_PX);
    const maxScroll = Math.max(1, g.height - g.viewport);
    return Math.round((Math.min(top, maxScroll) / maxScroll) * Math.max(0, g.rows - g.visible));
  }

  _render() {
    if (!this.root) return;
    const g = this._geometry();
    this.root.setAttribute("aria-rowcount", String(g.rows + 1));
    this.root.setAttribute("aria-colcount", String(this.width + 1));
    this.spacer.style.height = `${g.height}px`;
    const first = Math.max(0, Math.min(this._firstRow(g), Math.max(0, g.rows - 1)));
    const start = Math.max(0, first - (g.scaled ? 0 : OVERSCAN));
    const end = Math.min(g.rows, first + g.visible + OVERSCAN);
    const top = g.scaled ? Math.min(this.root.scrollTop, Math.max(0, g.height - g.viewport)) - (first - start) * ROW_PX : start * ROW_PX;
    this.body.style.transform = `translateY(${top}px)`;
    const needed = end - start;
    const body = this.body;
    while (body.childElementCount < needed) body.append(this._row());
    while (body.childElementCount > needed) body.lastElementChild.remove();
    const store = this.store;
    let row = body.firstElementChild;
    for (let r = start; r < end; r++, row = row.nextElementSibling) {
      row.setAttribute("aria-rowindex", String(r + 2));
      row.classList.toggle("active", r === this.active);
      row.id = r === this.active ? `${this.container.id}-active` : "";
      const cells = row.children;
      cells[0].textContent = String(r + 1);
      for (let c = 0; c < this.width; c++) {
        const value = store.cell(r, c);
        const cell = cells[c + 1];
        if (value === null) {
          cell.textContent = "NULL";
          cell.className = "null";
        } else {
          cell.textContent = value;
          cell.className = "";
        }
      }
    }
    if (this.active >= start && this.active < end) this.root.setAttribute("aria-activedescendant", `${this.container.id}-active`);
    else this.root.removeAttribute("aria-activedescendant");
    if (needed > 0 && this.onPaint) {
      const paint = this.onPaint;
      this.onPaint = null;
      paint();
    }
  }

  _row() {
    const row = el("div", "grid-row");
    row.setAttribute("role", "row");
    row.style.gridTemplateColumns = this.template;
    const num = el("span", "rownum");
    num.setAttribute("role", "rowheader");
    row.append(num);
    for (let c = 0; c < this.width; c++) {
      const cell = el("span");
      cell.setAttribute("role", "gridcell");
      row.append(cell);
    }
    return row;
  }

  /** Make row `r` (0-based) the active row and scroll it into view. */
  moveTo(r) {
    const g = this._geometry();
    if (!g.rows) return;
    this.active = Math.max(0, Math.min(g.rows - 1, r));
    const first = this._firstRow(g);
    if (this.active < first || this.active >= first + g.visible - 1) {
      const target = this.active < first ? this.active : this.active - g.visible + 2;
      if (g.scaled) {
        const maxScroll = Math.max(1, g.height - g.viewport);
        this.root.scrollTop = (Math.max(0, target) / Math.max(1, g.rows - g.visible)) * maxScroll;
      } else {
        this.root.scrollTop = Math.max(0, target) * ROW_PX;
      }
    }
    this._schedule();
  }

  _key(event) {
    const g = this._geometry();
    const page = Math.max(1, g.visible - 1);
    const moves = {
      ArrowDown: this.active + 1,
      ArrowUp: this.active - 1,
      PageDown: this.active + page,
      PageUp: this.active - page,
      Home: 0,
      End: g.rows - 1,
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    this.moveTo(moves[event.key]);
  }
}
