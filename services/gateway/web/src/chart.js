// A simple SVG chart of a numeric column (Y) against another column (X): points joined by a line
// when X is numeric, bars per row (the first MAX_BARS) when it is not. At most MAX_POINTS rows
// are sampled evenly, so a million-row result charts as fast as a small one.

const NS = "http://www.w3.org/2000/svg";
const MAX_POINTS = 2000;
const MAX_BARS = 60;
const W = 640;
const H = 260;
const PAD = { left: 56, right: 12, top: 12, bottom: 36 };

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(value) {
  if (!Number.isFinite(value)) return "";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return value.toExponential(2);
  return String(Math.round(value * 1000) / 1000);
}

export function drawChart(container, store, xCol, yCol) {
  container.replaceChildren();
  if (!store || store.rowCount === 0 || yCol < 0) return;
  const xName = store.columns[xCol] ? store.columns[xCol].name : `column ${xCol + 1}`;
  const yName = store.columns[yCol] ? store.columns[yCol].name : `column ${yCol + 1}`;
  const numericX = store.isNumeric(xCol);
  const rows = store.rowCount;
  const count = numericX ? Math.min(rows, MAX_POINTS) : Math.min(rows, MAX_BARS);
  // Evenly spaced rows, the first and the last included.
  const step = numericX && count > 1 ? (rows - 1) / (count - 1) : 1;
  const points = [];
  for (let i = 0; i < count; i++) {
    const r = Math.round(i * step);
    const y = store.number(r, yCol);
    if (!Number.isFinite(y)) continue;
    points.push({ x: numericX ? store.number(r, xCol) : i, label: store.cell(r, xCol) ?? "NULL", y });
  }
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${yName} by ${xName}: ${points.length} ${numericX ? "points" : "bars"}` });
  const finiteX = points.filter((p) => Number.isFinite(p.x));
  if (!finiteX.length) {
    container.append(root);
    return;
  }
  let minX = Math.min(...finiteX.map((p) => p.x));
  let maxX = Math.max(...finiteX.map((p) => p.x));
  let minY = Math.min(0, ...points.map((p) => p.y));
  let maxY = Math.max(0, ...points.map((p) => p.y));
  if (minX === maxX) { minX -= 1; maxX += 1; }
  if (minY === maxY) { minY -= 1; maxY += 1; }
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const sx = (x) => PAD.left + ((x - minX) / (maxX - minX)) * plotW;
  const sy = (y) => PAD.top + plotH - ((y - minY) / (maxY - minY)) * plotH;
  root.append(
    svg("line", { class: "axis", x1: PAD.left, y1: sy(0), x2: W - PAD.right, y2: sy(0) }),
    svg("line", { class: "axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom }),
    svg("text", { x: 4, y: PAD.top + 10 }, short(maxY)),
    svg("text", { x: 4, y: H - PAD.bottom }, short(minY)),
    svg("text", { x: PAD.left + plotW / 2, y: H - 6, "text-anchor": "middle" }, xName),
  );
  if (numericX) {
    finiteX.sort((a, b) => a.x - b.x);
    root.append(
      svg("polyline", { class: "line", points: finiteX.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ") }),
      svg("text", { x: PAD.left, y: H - PAD.bottom + 14 }, short(minX)),
      svg("text", { x: W - PAD.right, y: H - PAD.bottom + 14, "text-anchor": "end" }, short(maxX)),
    );
  } else {
    const band = plotW / Math.max(1, count);
    for (const p of points) {
      const top = Math.min(sy(p.y), sy(0));
      const bar = svg("rect", { class: "mark", x: PAD.left + p.x * band + band * 0.1, y: top, width: Math.max(1, band * 0.8), height: Math.max(1, Math.abs(sy(p.y) - sy(0))) });
      bar.append(svg("title", {}, `${p.label}: ${p.y}`));
      root.append(bar);
    }
  }
  container.append(root);
}
