// nova ui: shared helpers. Every string from the server is put on the page with textContent
// (el() below), never as HTML, so a record that holds markup or a script shows as text.
"use strict";

const Nova = (() => {
  const token = document.querySelector('meta[name="nova-token"]').content;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(path) {
    const response = await fetch(path, { credentials: "same-origin" });
    const body = await response.json().catch(() => ({ error: response.status + " " + response.statusText }));
    if (!response.ok) throw new Error(body.error || String(response.status));
    return body;
  }

  async function post(path, payload) {
    const response = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-nova-token": token },
      body: JSON.stringify(payload),
    });
    const body = await response.json().catch(() => ({ error: response.status + " " + response.statusText }));
    return { ok: response.ok, status: response.status, body };
  }

  function num(value, digits) {
    if (value === null || value === undefined || value === "") return "";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
    return value.toFixed(digits === undefined ? 4 : digits);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + "h" : "") + (h || m ? String(m).padStart(h ? 2 : 1, "0") + "m" : "") + String(r).padStart(2, "0") + "s";
  }

  function table(headers, rows, attrs) {
    return el("table", attrs || {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) =>
        typeof cell === "number" ? el("td", { class: "num" }, num(cell)) : el("td", {}, cell))))));
  }

  function kv(object) {
    return table(["key", "value"], Object.entries(object || {}).map(([k, v]) =>
      [k, typeof v === "object" && v !== null ? JSON.stringify(v) : (typeof v === "number" ? v : String(v))]));
  }

  function stateBadge(state) {
    return el("span", { class: "state state-" + state, "data-state": state }, state);
  }

  function runLink(rel, text) {
    return rel ? el("a", { href: "/run?path=" + encodeURIComponent(rel) }, text) : el("span", {}, text);
  }

  function setMain(...children) {
    const main = document.getElementById("main");
    main.replaceChildren(...children);
    return main;
  }

  function stamp(text) {
    document.getElementById("updated").textContent = text || ("updated " + new Date().toLocaleTimeString());
  }

  function failure(error) {
    return el("p", { class: "error" }, String(error.message || error));
  }

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  // A chart of one series group: {name, title, keys, x, y, stages}. Returns {node, update(data)}.
  function chart(data, width) {
    const box = el("div", { class: "chart", "data-chart": data.name, "data-points": 0 },
      el("h3", {}, data.title));
    const opts = {
      width: width || 460, height: 220,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { size: 60 }],
      series: [{ label: "step" }].concat(data.keys.map((key, i) => ({
        label: key, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: key.includes("eval"),
        points: { show: key.includes("eval") || data.x.length < 40 },
      }))),
    };
    let plot = new uPlot(opts, [data.x].concat(data.y), box);
    let keys = data.keys.join("\n");
    const drawn = () => box.setAttribute("data-points", plot.data[0].length);  // what the chart holds
    drawn();
    return {
      node: box,
      update(next) {
        if (next.keys.join("\n") !== keys) {  // a new series appeared (a DPO stage began): redraw
          plot.destroy();
          opts.series = [{ label: "step" }].concat(next.keys.map((key, i) => ({
            label: key, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: key.includes("eval") })));
          plot = new uPlot(opts, [next.x].concat(next.y), box);
          keys = next.keys.join("\n");
        } else {
          plot.setData([next.x].concat(next.y));
        }
        drawn();
      },
    };
  }

  function params() {
    return new URLSearchParams(location.search);
  }

  return { el, api, post, num, duration, table, kv, stateBadge, runLink, setMain, stamp, failure, chart, params };
})();
