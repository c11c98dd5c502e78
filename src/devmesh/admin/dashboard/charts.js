// Traffic over the last minute: the two canvas charts (requests/s, latency) and the services' sparklines,
// drawn from the `traffic` messages, one a second.

import { $, el, setAttr, setText } from "./dom.js";
import { fmtClock, fmtMs, fmtMsShort, fmtRps, trim } from "./format.js";
import { WINDOW, select, state } from "./state.js";

const COLORS = {
  accent: "#7aa2f7",
  green: "#5bd08d",
  red: "#f47067",
  purple: "#b392f0",
  grid: "#1c2330",
  axis: "#566072",
  text: "#d5dbe5",
};
// the services' lines: not the accent, that is the total
const PALETTE = ["#5bd08d", "#e3b341", "#b392f0", "#56c8d8", "#f7768e", "#ff9e64", "#9ece6a", "#bb9af7", "#2ac3de", "#c0caf5"];

let colorOrder = new Map();
function hashColor(name) {
  // Distinct colours for the services on screen: by position in the sorted names, hashed for the others.
  const index = colorOrder.get(name);
  if (index !== undefined) return PALETTE[index % PALETTE.length];
  let hash = 0;
  for (let i = 0; i < name.length; i++) hash = (hash * 31 + name.charCodeAt(i)) | 0;
  return PALETTE[Math.abs(hash) % PALETTE.length];
}

// the services in the table's order (sorted names): neighbours get different colours
export function setColorOrder(names) {
  colorOrder = new Map(names.map((name, i) => [name, i]));
}

function niceMax(v, floor) {
  // The top of a 4-step axis whose steps are round numbers (1, 2, 2.5, 5 x 10^n).
  const step = Math.max(v, floor) / 4;
  const exp = 10 ** Math.floor(Math.log10(step));
  const f = step / exp;
  const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nice * exp * 4;
}

export function trafficWindow() {
  // One slot per second, aligned on the newest message: slots[i] is the message of second end-59+i or null.
  const slots = new Array(WINDOW).fill(null);
  const last = state.traffic[state.traffic.length - 1];
  if (!last) return { slots, end: null, count: 0 };
  const end = Math.round(last.time);
  let count = 0;
  for (const message of state.traffic) {
    const index = WINDOW - 1 - (end - Math.round(message.time));
    if (index >= 0 && index < WINDOW) {
      if (!slots[index]) count++;
      slots[index] = message;
    }
  }
  return { slots, end, count };
}

// the Traffic column of the services table (rows: services.js's)
export function renderSparklines(win, rows) {
  const latest = win.slots[WINDOW - 1];
  for (const row of rows.values()) {
    const name = row.name;
    let max = 0;
    let errs = "";
    const values = new Array(WINDOW);
    for (let i = 0; i < WINDOW; i++) {
      const sample = win.slots[i]?.services[name];
      const v = sample ? sample.rps || 0 : 0;
      values[i] = v;
      if (v > max) max = v;
      if (sample && sample.errors) errs += `M${i},20V${(20 - Math.min(8, 3 + sample.errors)).toFixed(0)}`;
    }
    let line = "M0,19L59,19";
    let area = "";
    if (max > 0) {
      const scale = 17 / max;
      line = `M${values.map((v, i) => `${i},${(19 - v * scale).toFixed(1)}`).join("L")}`;
      area = `${line}L59,20L0,20Z`;
    }
    setAttr(row.line, "d", line);
    setAttr(row.area, "d", area);
    setAttr(row.errs, "d", errs);
    const now = latest?.services[name]?.rps || 0;
    setText(row.rps, `${fmtRps(now)}/s`);
    setAttr(row.rps, "data-rps", String(now));
    row.rps.classList.toggle("is-active", now > 0);
  }
}

class Chart {
  constructor(canvas, legend, options) {
    this.canvas = canvas;
    this.legend = legend;
    this.ctx = canvas.getContext("2d");
    this.options = options;
    this.data = { series: [], end: null };
    this.hover = null;
    this.legendKey = "";
    this.width = 0;
    this.height = 0;
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
    this.hoverFrame = 0;
    canvas.addEventListener("mousemove", (event) => {
      this.hover = event.offsetX;
      if (!this.hoverFrame) {
        this.hoverFrame = requestAnimationFrame(() => {
          this.hoverFrame = 0;
          this.draw();
        });
      }
    });
    canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.draw();
    });
    this.resize();
  }

  resize() {
    const box = this.canvas.parentElement.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    this.width = Math.max(1, Math.floor(box.width));
    this.height = Math.max(1, Math.floor(box.height));
    this.canvas.width = Math.floor(this.width * ratio);
    this.canvas.height = Math.floor(this.height * ratio);
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.draw();
  }

  set(data) {
    this.data = data;
    this.renderLegend();
    this.draw();
  }

  renderLegend() {
    const key = this.data.series.map((s) => `${s.label}:${s.color}`).join("|");
    if (key === this.legendKey) return;
    this.legendKey = key;
    this.legend.textContent = "";
    for (const s of this.data.series) {
      const item = el("span", { class: s.service ? "is-clickable" : null, title: s.service ? `Show ${s.service}` : null });
      const swatch = el("i");
      swatch.style.background = s.color;
      item.append(swatch, s.label);
      if (s.service) item.addEventListener("click", () => select(s.service));
      this.legend.append(item);
    }
  }

  draw() {
    const { ctx, width, height } = this;
    const { series, end } = this.data;
    const format = this.options.axis;
    ctx.clearRect(0, 0, width, height);
    const left = 38;
    const right = 8;
    const top = 8;
    const bottom = 18;
    const plotW = Math.max(1, width - left - right);
    const plotH = Math.max(1, height - top - bottom);
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    const yMax = niceMax(max * 1.08, this.options.floor);
    const xAt = (i) => left + (i / (WINDOW - 1)) * plotW;
    const yAt = (v) => top + plotH - (v / yMax) * plotH;

    ctx.font = "10.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
    ctx.textBaseline = "middle";
    ctx.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const v = (yMax * k) / 4;
      const y = Math.round(yAt(v)) + 0.5;
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "right";
      ctx.fillText(format(v), left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    for (const secondsAgo of [60, 45, 30, 15, 0]) {
      const x = xAt(WINDOW - 1 - Math.min(secondsAgo, WINDOW - 1));
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = secondsAgo === 60 ? "left" : secondsAgo === 0 ? "right" : "center";
      ctx.fillText(secondsAgo === 0 ? "now" : `-${secondsAgo}s`, x, height - 4);
    }

    if (end === null) {
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "center";
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillText(state.connection === "live" ? "waiting for traffic…" : "no data", left + plotW / 2, top + plotH / 2);
      return;
    }

    for (const s of series) {
      ctx.beginPath();
      let started = false;
      let firstX = 0;
      let lastX = 0;
      for (let i = 0; i < WINDOW; i++) {
        const v = s.values[i];
        if (v === null) {
          continue;
        }
        const x = xAt(i);
        const y = yAt(v);
        if (!started) {
          ctx.moveTo(x, y);
          firstX = x;
          started = true;
        } else ctx.lineTo(x, y);
        lastX = x;
      }
      if (!started) continue;
      ctx.strokeStyle = s.color;
      ctx.lineWidth = s.width || 1.5;
      ctx.lineJoin = "round";
      ctx.setLineDash(s.dash || []);
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.fill) {
        ctx.lineTo(lastX, top + plotH);
        ctx.lineTo(firstX, top + plotH);
        ctx.closePath();
        const gradient = ctx.createLinearGradient(0, top, 0, top + plotH);
        gradient.addColorStop(0, `${s.color}40`);
        gradient.addColorStop(1, `${s.color}05`);
        ctx.fillStyle = gradient;
        ctx.fill();
      }
    }

    if (this.hover !== null && this.hover >= left && this.hover <= left + plotW && series.length) {
      const i = Math.round(((this.hover - left) / plotW) * (WINDOW - 1));
      const x = xAt(i);
      ctx.strokeStyle = "#3a4557";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, top);
      ctx.lineTo(Math.round(x) + 0.5, top + plotH);
      ctx.stroke();
      const lines = [`${fmtClock(end - (WINDOW - 1 - i))}`];
      const colors = [COLORS.axis];
      for (const s of series.slice(0, 7)) {
        const v = s.values[i];
        lines.push(`${s.label}  ${v === null ? "–" : this.options.value(v)}`);
        colors.push(s.color);
        if (v !== null) {
          ctx.fillStyle = s.color;
          ctx.beginPath();
          ctx.arc(x, yAt(v), 2.5, 0, Math.PI * 2);
          ctx.fill();
        }
      }
      ctx.font = "11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
      const boxW = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 16;
      const boxH = lines.length * 15 + 8;
      const boxX = x + 10 + boxW > width ? x - 10 - boxW : x + 10;
      const boxY = top + 2;
      ctx.fillStyle = "rgba(17, 21, 28, 0.94)";
      ctx.strokeStyle = "#2a3342";
      ctx.beginPath();
      ctx.rect(boxX, boxY, boxW, boxH);
      ctx.fill();
      ctx.stroke();
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      lines.forEach((line, k) => {
        ctx.fillStyle = k === 0 ? COLORS.axis : COLORS.text;
        if (k > 0) {
          ctx.fillStyle = colors[k];
          ctx.fillRect(boxX + 8, boxY + 6 + k * 15 + 4, 6, 2);
          ctx.fillStyle = COLORS.text;
          ctx.fillText(line, boxX + 18, boxY + 5 + k * 15);
        } else ctx.fillText(line, boxX + 8, boxY + 5);
      });
    }
  }
}

const rpsChart = new Chart($("#chart-rps"), $("#legend-rps"), {
  axis: (v) => (v < 1000 ? trim(v) : `${trim(v / 1000)}k`),
  value: (v) => `${fmtRps(v)}/s`,
  floor: 2,
});
const latencyChart = new Chart($("#chart-latency"), $("#legend-latency"), {
  axis: (v) => fmtMsShort(v),
  value: (v) => fmtMs(v),
  floor: 1,
});

function seriesOf(win, name, pick) {
  return win.slots.map((message) => {
    if (!message) return null;
    const sample = message.services[name];
    return sample ? (pick(sample) ?? 0) : 0;
  });
}

function seriesOfLatency(win, name, pick) {
  // Latency exists only for seconds with requests: other seconds are gaps, not zeros.
  return win.slots.map((message) => {
    const sample = message?.services[name];
    return sample && sample.requests ? (pick(sample) ?? null) : null;
  });
}

export function renderCharts(win) {
  const latest = win.slots[WINDOW - 1];
  const rpsCanvas = rpsChart.canvas;
  const latencyCanvas = latencyChart.canvas;
  let rpsNow = 0;
  let p50Now = null;
  let p95Now = null;
  if (state.selected) {
    const name = state.selected;
    const rps = seriesOf(win, name, (s) => s.rps);
    const errors = seriesOf(win, name, (s) => s.errors);
    rpsChart.set({
      end: win.end,
      series: [
        { label: `${name} req/s`, color: COLORS.accent, values: rps, fill: true, width: 1.8 },
        { label: "errors/s", color: COLORS.red, values: errors, width: 1.3 },
      ],
    });
    latencyChart.set({
      end: win.end,
      series: [
        { label: "p50", color: COLORS.green, values: seriesOfLatency(win, name, (s) => s.p50_ms), width: 1.6 },
        { label: "p95", color: COLORS.purple, values: seriesOfLatency(win, name, (s) => s.p95_ms), width: 1.6 },
      ],
    });
    const sample = latest?.services[name];
    rpsNow = sample?.rps || 0;
    p50Now = sample?.requests ? sample.p50_ms : null;
    p95Now = sample?.requests ? sample.p95_ms : null;
  } else {
    // All services: the total, plus the busiest few as their own lines.
    const totals = new Map();
    for (const message of win.slots) {
      if (!message) continue;
      for (const [name, sample] of Object.entries(message.services)) {
        totals.set(name, (totals.get(name) || 0) + (sample.requests || sample.rps || 0));
      }
    }
    const busiest = [...totals.entries()]
      .filter(([, n]) => n > 0)
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .slice(0, 5)
      .map(([name]) => name)
      .sort();
    const total = win.slots.map((message) => {
      if (!message) return null;
      let sum = 0;
      for (const sample of Object.values(message.services)) sum += sample.rps || 0;
      return sum;
    });
    rpsChart.set({
      end: win.end,
      series: [
        { label: "total", color: COLORS.accent, values: total, fill: true, width: 1.8 },
        ...busiest.map((name) => ({
          label: name,
          service: name,
          color: hashColor(name),
          values: seriesOf(win, name, (s) => s.rps),
          width: 1.2,
        })),
      ],
    });
    latencyChart.set({
      end: win.end,
      series: busiest.map((name) => ({
        label: `${name} p95`,
        service: name,
        color: hashColor(name),
        values: seriesOfLatency(win, name, (s) => s.p95_ms),
        width: 1.5,
      })),
    });
    if (latest) {
      for (const sample of Object.values(latest.services)) {
        rpsNow += sample.rps || 0;
        if (sample.requests && sample.p95_ms !== undefined) p95Now = Math.max(p95Now ?? 0, sample.p95_ms);
        if (sample.requests && sample.p50_ms !== undefined) p50Now = Math.max(p50Now ?? 0, sample.p50_ms);
      }
    }
  }
  rpsCanvas.dataset.lastRps = String(rpsNow);
  rpsCanvas.dataset.points = String(win.count);
  rpsCanvas.dataset.end = win.end === null ? "" : String(win.end);
  latencyCanvas.dataset.lastP50 = p50Now === null ? "" : String(p50Now);
  latencyCanvas.dataset.lastP95 = p95Now === null ? "" : String(p95Now);
  latencyCanvas.dataset.points = String(win.count);
  setText($("#rps-now"), win.end === null ? "–" : `${fmtRps(rpsNow)} req/s`);
  setText(
    $("#latency-now"),
    p95Now === null ? "–" : state.selected ? `p50 ${fmtMs(p50Now)} · p95 ${fmtMs(p95Now)}` : `worst p95 ${fmtMs(p95Now)}`,
  );
}

// what the charts show: one service, or all
export function renderScope() {
  setText($("#chart-scope"), state.selected || "all services");
  $("#chart-clear").hidden = !state.selected;
}
$("#chart-clear").addEventListener("click", () => select(null));
