// How numbers, durations, times and sizes read on the page.

export function fmtRps(v) {
  if (!v) return "0";
  if (v < 10) return v.toFixed(1);
  if (v < 1000) return v.toFixed(0);
  return (v / 1000).toFixed(1) + "k";
}
export function fmtMs(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v < 1) return v.toFixed(2) + " ms";
  if (v < 10) return v.toFixed(1) + " ms";
  if (v < 1000) return v.toFixed(0) + " ms";
  return (v / 1000).toFixed(2) + " s";
}
export function trim(n) {
  return String(Number(n.toPrecision(3)));
}
export function fmtMsShort(v) {
  if (!v) return "0";
  if (v < 1000) return `${trim(v)}ms`;
  return `${trim(v / 1000)}s`;
}
export function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}
export function fmtClock(epoch, millis = false) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return millis ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
}
export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
// a countdown or a scenario's length: 45s, 2m 05s, 1h 02m
export function fmtSeconds(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}
