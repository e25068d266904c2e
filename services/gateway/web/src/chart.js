// Charts of a result with Observable Plot (bar, line, area, scatter) and d3-shape (pie, for which
// Plot has no mark). Both build plain SVG with attributes and no eval. Plot adds a <style> element
// to its SVG, which the page's CSP (no inline style) would refuse: it is removed before the SVG
// enters the page, and style.css gives the same rules to `.chart-plot`.
//
// Bar and pie sum Y per X value (the first MAX_CATEGORIES / MAX_SLICES); line, area and scatter
// sample at most MAX_POINTS rows evenly, so a million-row result charts as fast as a small one.
import * as Plot from "@observablehq/plot";
import { arc, pie } from "d3-shape";

export const CHART_TYPES = ["bar", "line", "area", "scatter", "pie"];
const MAX_POINTS = 2000;
const MAX_CATEGORIES = 50;
const MAX_SLICES = 12;
const WIDTH = 640;
const HEIGHT = 300;
const COLOR = "#0550ae";
const PALETTE = ["#0550ae", "#bc4c00", "#116329", "#8250df", "#b3261e", "#0a7b83", "#9a6700", "#cf222e", "#1f6feb", "#57606a", "#6639ba", "#953800"];
const KEY_NAME = /^(id|key|pk)$|_(id|key|pk)$|^(id|pk)_/i;
const DATE_TYPE = /date|time/i;
const DATE_TEXT = /^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$/;
const SAMPLE = 50;
// The rules of Plot's own <style>, for a downloaded SVG (the page has them in style.css).
const STANDALONE_STYLE = ".chart-plot{display:block;height:auto;max-width:100%;background:white}.chart-plot text,.chart-plot tspan{white-space:pre}";

const columnName = (store, c) => (store.columns[c] ? store.columns[c].name : `column ${c + 1}`);

/** Each column's kind: "number" (every cell a number or NULL), "date" (a date type, or ISO dates), or "text". */
export function columnKinds(store) {
  return Array.from({ length: store.width }, (_, c) => {
    if (store.isNumeric(c)) return "number";
    const type = (store.columns[c] && store.columns[c].type) || "";
    if (DATE_TYPE.test(type) && !/interval/i.test(type)) return "date";
    let seen = 0;
    for (let r = 0; r < store.rowCount && seen < SAMPLE; r++) {
      const text = store.cell(r, c);
      if (text === null) continue;
      if (!DATE_TEXT.test(text)) return "text";
      seen++;
    }
    return seen ? "date" : "text";
  });
}

/** What a person would pick: a date or text column on X (else the first column), the first numeric column on Y that is not a key or id. */
export function defaultSpec(store) {
  const kinds = columnKinds(store);
  const names = kinds.map((_, c) => columnName(store, c));
  let x = kinds.indexOf("date");
  if (x < 0) x = kinds.indexOf("text");
  const numbers = kinds.flatMap((kind, c) => (kind === "number" && c !== x ? [c] : []));
  const measures = numbers.filter((c) => !KEY_NAME.test(names[c]));
  if (x < 0) x = numbers.length ? numbers[0] : 0; // numbers only: the first (often a key) on X
  const y = measures.find((c) => c !== x) ?? numbers.find((c) => c !== x);
  const type = kinds[x] === "date" ? "line" : kinds[x] === "text" ? "bar" : "scatter";
  return { type, x: names[x], y: y === undefined ? null : names[y], title: "" };
}

function toDate(text) {
  if (text === null) return null;
  // A date without a zone is read as UTC, so that the axis shows the day the database holds.
  const iso = text.length === 10 ? `${text}T00:00:00Z` : /Z|[+-]\d{2}(:?\d{2})?$/.test(text) ? text.replace(" ", "T") : `${text.replace(" ", "T")}Z`;
  const value = new Date(iso);
  return Number.isNaN(value.getTime()) ? null : value;
}

function xValue(store, r, c, kind) {
  if (kind === "number") return store.number(r, c);
  if (kind === "date") return toDate(store.cell(r, c));
  return store.cell(r, c) ?? "NULL";
}

/** Sums of Y per X value, in the order the X values first come; `limit` of them at most. */
function totals(store, xc, yc, limit) {
  const { sums, dropped } = store.sumBy(xc, yc, limit);
  return { points: Array.from(sums, ([x, y]) => ({ x, y })), dropped };
}

/** Evenly spaced rows, the first and the last included: at most MAX_POINTS points. */
function sampled(store, xc, yc, kind) {
  const rows = store.rowCount;
  const count = Math.min(rows, MAX_POINTS);
  const step = count > 1 ? (rows - 1) / (count - 1) : 1;
  const points = [];
  for (let i = 0; i < count; i++) {
    const r = Math.round(i * step);
    const y = store.number(r, yc);
    const x = xValue(store, r, xc, kind);
    if (!Number.isFinite(y) || x === null || (kind === "number" && !Number.isFinite(x))) continue;
    points.push({ x, y });
  }
  if (kind !== "text") points.sort((a, b) => a.x - b.x);
  return { points, sampled: rows > count };
}

function plotSvg(type, points, spec, kind) {
  const base = { x: "x", y: "y" };
  const marks = {
    bar: () => [Plot.barY(points, { ...base, fill: COLOR, title: (d) => `${d.x}: ${d.y}` }), Plot.ruleY([0])],
    line: () => [Plot.lineY(points, { ...base, stroke: COLOR }), Plot.ruleY([0])],
    area: () => [Plot.areaY(points, { ...base, fill: COLOR, fillOpacity: 0.3 }), Plot.lineY(points, { ...base, stroke: COLOR }), Plot.ruleY([0])],
    scatter: () => [Plot.dot(points, { ...base, r: 2, fill: COLOR, stroke: null })],
  }[type]();
  const x = { label: spec.x };
  if (type === "bar") Object.assign(x, { type: "band", tickRotate: points.length > 12 ? -40 : 0 });
  else if (kind === "date") x.type = "utc";
  else if (kind === "text") x.type = "point";
  const svg = Plot.plot({
    className: "chart-plot",
    width: WIDTH,
    height: HEIGHT,
    marginLeft: 64,
    marginBottom: type === "bar" && points.length > 12 ? 80 : 40,
    x,
    y: { label: spec.y, grid: true },
    marks,
  });
  for (const style of svg.querySelectorAll("style")) style.remove();
  // The whole SVG is one image (role=img with its own label): ARIA labels on its groups, which
  // have no role, are not allowed (axe: aria-prohibited-attr). They stay as data-plot-label.
  for (const node of svg.querySelectorAll("[aria-label]")) {
    node.dataset.plotLabel = node.getAttribute("aria-label");
    node.removeAttribute("aria-label");
  }
  for (const node of svg.querySelectorAll("[aria-description]")) node.removeAttribute("aria-description");
  return svg;
}

function pieSvg(points) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "chart-plot");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("width", String(WIDTH));
  svg.setAttribute("height", String(HEIGHT));
  svg.setAttribute("font-family", "system-ui, sans-serif");
  svg.setAttribute("font-size", "11");
  const radius = HEIGHT / 2 - 10;
  const group = document.createElementNS(NS, "g");
  group.setAttribute("transform", `translate(${HEIGHT / 2},${HEIGHT / 2})`);
  const positive = points.filter((p) => p.y > 0);
  const arcs = pie().sort(null).value((p) => p.y)(positive);
  const shape = arc().innerRadius(0).outerRadius(radius);
  arcs.forEach((a, i) => {
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", shape(a));
    path.setAttribute("fill", PALETTE[i % PALETTE.length]);
    path.setAttribute("stroke", "white");
    const title = document.createElementNS(NS, "title");
    title.textContent = `${a.data.x}: ${a.data.y}`;
    path.append(title);
    group.append(path);
  });
  svg.append(group);
  // The legend beside the pie: a swatch and the label of each slice.
  arcs.forEach((a, i) => {
    const y = 20 + i * 20;
    const swatch = document.createElementNS(NS, "rect");
    Object.entries({ x: HEIGHT + 20, y: y - 10, width: 12, height: 12, fill: PALETTE[i % PALETTE.length] }).forEach(([k, v]) => swatch.setAttribute(k, String(v)));
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", String(HEIGHT + 38));
    label.setAttribute("y", String(y));
    label.setAttribute("fill", "currentColor");
    label.textContent = `${a.data.x}: ${a.data.y.toLocaleString("en")}`;
    svg.append(swatch, label);
  });
  return svg;
}

/**
 * Draw `spec` ({type, x, y, title}: column names) of `store` into `container`; returns the chart's SVG, or null (with a note) when it cannot be drawn.
 */
export function drawChart(container, store, spec) {
  container.replaceChildren();
  const names = Array.from({ length: store.width }, (_, c) => columnName(store, c));
  const xc = names.indexOf(spec.x);
  const yc = names.indexOf(spec.y);
  const note = (text) => {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = text;
    container.append(p);
  };
  if (!store.rowCount || xc < 0 || yc < 0 || !store.isNumeric(yc)) {
    note(store.rowCount ? "No numeric column to chart." : "No rows to chart.");
    return null;
  }
  const kind = columnKinds(store)[xc];
  const type = CHART_TYPES.includes(spec.type) ? spec.type : "bar";
  let data;
  if (type === "bar" || type === "pie") {
    const { points, dropped } = totals(store, xc, yc, type === "pie" ? MAX_SLICES : MAX_CATEGORIES);
    data = { points, remark: dropped ? `the first ${points.length} values of ${spec.x}, summed` : "" };
  } else {
    const { points, sampled: cut } = sampled(store, xc, yc, kind);
    data = { points, remark: cut ? `${points.length.toLocaleString("en")} of ${store.rowCount.toLocaleString("en")} rows, evenly sampled` : "" };
  }
  const svg = type === "pie" ? pieSvg(data.points) : plotSvg(type, data.points, spec, kind);
  const title = spec.title || `${spec.y} by ${spec.x}`;
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${type} chart of ${data.points.length} ${type === "bar" || type === "pie" ? "values" : "points"}`);
  if (spec.title) {
    const heading = document.createElement("p");
    heading.className = "chart-title";
    heading.textContent = spec.title;
    container.append(heading);
  }
  container.append(svg);
  if (data.remark) note(`Shown: ${data.remark}.`);
  return svg;
}

/** The chart as a standalone SVG document (with the rules the page gives it from style.css). */
export function svgMarkup(svg) {
  const copy = svg.cloneNode(true);
  copy.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  const style = document.createElementNS("http://www.w3.org/2000/svg", "style");
  style.textContent = STANDALONE_STYLE;
  copy.prepend(style);
  return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(copy);
}

/** The chart as a PNG at twice its size: the SVG drawn on a canvas from a data: URL (the CSP allows data: images). */
export async function pngBlob(svg) {
  const image = new Image();
  image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgMarkup(svg));
  await image.decode();
  const width = Number(svg.getAttribute("width")) || WIDTH;
  const height = Number(svg.getAttribute("height")) || HEIGHT;
  const canvas = document.createElement("canvas");
  canvas.width = width * 2;
  canvas.height = height * 2;
  const context = canvas.getContext("2d");
  context.fillStyle = "white";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve, reject) => canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the chart could not be drawn as PNG"))), "image/png"));
}
