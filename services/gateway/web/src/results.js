// Query results kept compactly: rows arrive in chunks and are stored column by column, numbers in
// Float64Arrays and text packed into one string per chunk and column, so that a million rows cost
// tens of megabytes and no DOM. The grid, the CSV and the chart read cells from here.

const NUM = 0;
const TEXT = 1;

function textOf(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  return JSON.stringify(value);
}

function packColumn(rows, c) {
  const n = rows.length;
  let numeric = true;
  let nullCount = 0;
  for (let r = 0; r < n; r++) {
    const v = rows[r][c];
    if (v === null || v === undefined) nullCount++;
    else if (typeof v !== "number") { numeric = false; break; }
  }
  const nulls = nullCount ? new Uint8Array(n) : null;
  if (numeric) {
    const values = new Float64Array(n);
    for (let r = 0; r < n; r++) {
      const v = rows[r][c];
      if (v === null || v === undefined) nulls[r] = 1;
      else values[r] = v;
    }
    return { kind: NUM, values, nulls };
  }
  const parts = new Array(n);
  const ends = new Uint32Array(n);
  let nullsText = null;
  let length = 0;
  for (let r = 0; r < n; r++) {
    const t = textOf(rows[r][c]);
    if (t === null) {
      if (!nullsText) nullsText = new Uint8Array(n);
      nullsText[r] = 1;
      parts[r] = "";
    } else {
      parts[r] = t;
      length += t.length;
    }
    ends[r] = length;
  }
  return { kind: TEXT, text: parts.join(""), ends, nulls: nullsText };
}

export class ResultStore {
  constructor(columns = []) {
    this.columns = columns; // [{name, type}]
    this.chunks = []; // [{offset, count, cols}]
    this.rowCount = 0;
    this.truncated = false;
    this.done = false;
    this.error = null;
    this._last = null;
  }

  /** Append `rows` (arrays of cells) that start at row `offset`. */
  append(offset, rows) {
    if (!rows.length) return;
    const width = rows[0].length;
    const cols = new Array(width);
    for (let c = 0; c < width; c++) cols[c] = packColumn(rows, c);
    this.chunks.push({ offset, count: rows.length, cols });
    this.rowCount = Math.max(this.rowCount, offset + rows.length);
  }

  get width() {
    return this.columns.length || (this.chunks[0] ? this.chunks[0].cols.length : 0);
  }

  _chunk(row) {
    const last = this._last;
    if (last && row >= last.offset && row < last.offset + last.count) return last;
    const chunks = this.chunks;
    let lo = 0;
    let hi = chunks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const chunk = chunks[mid];
      if (row < chunk.offset) hi = mid - 1;
      else if (row >= chunk.offset + chunk.count) lo = mid + 1;
      else return (this._last = chunk);
    }
    return null;
  }

  /** The cell as text (null for SQL NULL or a row not received). */
  cell(row, c) {
    const chunk = this._chunk(row);
    if (!chunk) return null;
    const col = chunk.cols[c];
    const i = row - chunk.offset;
    if (col.nulls && col.nulls[i]) return null;
    if (col.kind === NUM) return String(col.values[i]);
    return col.text.slice(i ? col.ends[i - 1] : 0, col.ends[i]);
  }

  /** The cell as a number (NaN when it is not one). */
  number(row, c) {
    const chunk = this._chunk(row);
    if (!chunk) return NaN;
    const col = chunk.cols[c];
    const i = row - chunk.offset;
    if (col.nulls && col.nulls[i]) return NaN;
    if (col.kind === NUM) return col.values[i];
    const t = col.text.slice(i ? col.ends[i - 1] : 0, col.ends[i]);
    return t === "" ? NaN : Number(t);
  }

  /**
   * Sums of column `yc` (its finite numbers) per text of column `xc` (NULL as "NULL"), over every
   * row, chunk by chunk: the first `limit` keys in the order they come, and how many rows had another key.
   */
  sumBy(xc, yc, limit) {
    const sums = new Map();
    const byLength = new Map(); // text keys by length: once `limit` keys are known, other rows are matched without making strings
    let dropped = 0;
    const known = (text, start, end) => {
      const candidates = byLength.get(end - start);
      if (candidates) for (const key of candidates) if (text.startsWith(key, start)) return key;
      return null;
    };
    for (const chunk of this.chunks) {
      const xcol = chunk.cols[xc];
      const ycol = chunk.cols[yc];
      for (let i = 0; i < chunk.count; i++) {
        let y;
        if (ycol.nulls && ycol.nulls[i]) continue;
        if (ycol.kind === NUM) y = ycol.values[i];
        else y = Number(ycol.text.slice(i ? ycol.ends[i - 1] : 0, ycol.ends[i]));
        if (!Number.isFinite(y)) continue;
        let key;
        if (xcol.nulls && xcol.nulls[i]) key = "NULL";
        else if (xcol.kind === NUM) key = String(xcol.values[i]);
        else {
          const start = i ? xcol.ends[i - 1] : 0;
          const end = xcol.ends[i];
          key = sums.size < limit ? xcol.text.slice(start, end) : known(xcol.text, start, end);
          if (key === null) {
            dropped++;
            continue;
          }
        }
        const sum = sums.get(key);
        if (sum !== undefined) sums.set(key, sum + y);
        else if (sums.size < limit) {
          sums.set(key, y);
          if (xcol.kind !== NUM) byLength.set(key.length, [...(byLength.get(key.length) || []), key]);
        } else dropped++;
      }
    }
    return { sums, dropped };
  }

  /** Whether every received cell of column `c` is a number or NULL. */
  isNumeric(c) {
    return this.chunks.length > 0 && this.chunks.every((chunk) => chunk.cols[c].kind === NUM);
  }
}

// CSV injection (OWASP, "CSV Injection"): a spreadsheet runs a cell that begins with = + - @, a
// tab or a carriage return as a formula. Such a cell is quoted and gets a leading single quote,
// which spreadsheets show as text. Plain numbers ("-2", "1e+21") are no formula and stay exact.
const FORMULA_START = /^[=+\-@\t\r]/;
const PLAIN_NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

export function csvField(text) {
  if (text === null) return "";
  if (FORMULA_START.test(text) && !PLAIN_NUMBER.test(text)) return `"'${text.replaceAll('"', '""')}"`;
  return /[",\r\n]/.test(text) || text !== text.trim() ? '"' + text.replaceAll('"', '""') + '"' : text;
}

/** The received rows as RFC 4180 CSV (CRLF line ends), header first, formula-like cells neutralised, built in pieces into a Blob. */
export function csvBlob(store) {
  const width = store.width;
  const names = store.columns.length ? store.columns.map((col) => col.name) : Array.from({ length: width }, (_, i) => `column${i + 1}`);
  const pieces = [names.map(csvField).join(",") + "\r\n"];
  const step = 4096;
  for (let start = 0; start < store.rowCount; start += step) {
    const end = Math.min(store.rowCount, start + step);
    const lines = new Array(end - start);
    for (let r = start; r < end; r++) {
      const cells = new Array(width);
      for (let c = 0; c < width; c++) cells[c] = csvField(store.cell(r, c));
      lines[r - start] = cells.join(",");
    }
    pieces.push(lines.join("\r\n") + "\r\n");
  }
  return new Blob(pieces, { type: "text/csv;charset=utf-8" });
}
