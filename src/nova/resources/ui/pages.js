// nova ui pages: runs, run, compare. Each polls the JSON API and rebuilds its tables; charts
// are updated in place, so a live run's curves grow while it trains.
"use strict";

(() => {
  const { el, api, post, num, duration, table, kv, stateBadge, runLink, setMain, stamp, failure, chart, params } = Nova;
  const POLL_MS = 2000;

  function every(fn) {
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try { await fn(); } finally { busy = false; }
    };
    tick();
    return setInterval(tick, POLL_MS);
  }

  // ---- runs page ---------------------------------------------------------------------------
  function latestAlert(p) {
    if (!p.alert_count) return "";
    const last = p.last_alerts[p.last_alerts.length - 1] || {};
    return p.alert_count + ": " + (last.message || last.kind || "");
  }

  function phaseRow(entry, p) {
    const step = p.step === null ? "" : p.step + (p.total_steps ? " of " + (p.total_exact ? "" : "~") + p.total_steps : "");
    return [
      el("input", { type: "checkbox", class: "pick", value: p.rel || "", disabled: !p.rel }),
      entry.kind === "pipeline" ? entry.path : "", runLink(p.rel, p.name), stateBadge(p.state),
      el("span", { "data-alive": p.alive ? "yes" : "no" }, p.alive ? "alive" : "not alive"),
      p.stage || "", step, p.train_loss === null ? "" : p.train_loss, p.eval_loss === null ? "" : p.eval_loss,
      p.tokens_per_second === null ? "" : p.tokens_per_second, duration(p.eta_seconds), latestAlert(p),
    ];
  }

  async function runsPage() {
    const body = el("div", {});
    const compare = el("button", { on: { click: () => {
      const picked = [...document.querySelectorAll("input.pick:checked")].map((box) => box.value);
      if (picked.length) location.href = "/compare?" + picked.map((p) => "path=" + encodeURIComponent(p)).join("&");
    } } }, "compare selected");
    setMain(el("h1", {}, "Runs"), body, compare);
    every(async () => {
      let data;
      try { data = await api("/api/runs"); } catch (e) { body.replaceChildren(failure(e)); return; }
      const picked = new Set([...document.querySelectorAll("input.pick:checked")].map((b) => b.value));
      const rows = [];
      for (const entry of data.runs) {
        if (entry.error) rows.push(["", entry.path, "", stateBadge("unreadable"), "", "", "", "", "", "", "", entry.error]);
        for (const p of entry.phases) rows.push(phaseRow(entry, p));
      }
      const t = table(["", "pipeline", "run", "state", "process", "stage", "step", "train loss", "eval loss",
        "tokens/s", "ETA", "alerts"], rows, { id: "runs" });
      t.querySelectorAll("input.pick").forEach((b) => { b.checked = picked.has(b.value); });
      body.replaceChildren(el("p", { class: "muted" }, "under " + data.root + " (" + rows.length + " runs)"),
        rows.length ? t : el("p", {}, "no runs yet: train one (nova train --config ...) or launch it from the config editor"));
      stamp();
    });
  }

  // ---- run page ----------------------------------------------------------------------------
  function statusTable(s) {
    return kv({
      "run dir": s.run_dir, state: s.state, process: s.process, stage: s.stage || "",
      stages: (s.stages || []).join(", "), step: s.step === null ? "" : s.step + (s.total_steps ? " of " + s.total_steps : ""),
      "train loss": num(s.train_loss), "eval loss": num(s.eval_loss), "tokens/s": num(s.tokens_per_second, 1),
      "s/step": num(s.seconds_per_step, 2), ETA: duration(s.eta_seconds), checkpoint: s.checkpoint || "",
      note: s.note || "", error: s.error || "", recoveries: s.recoveries,
    });
  }

  function dataReports(reports) {
    const out = [];
    for (const [stage, r] of Object.entries(reports)) {
      const skipped = Object.entries(r.skipped || {}).map(([k, v]) => k + " " + v).join(", ") || "0";
      out.push(el("h3", {}, stage), table(["read", "kept", "skipped (by reason)", "over max_samples", "deduplicated",
        "truncated", "dropped (too long)", "dropped (nothing trained)", "train", "eval", "trained tokens"],
        [[r.read, r.kept, skipped, r.over_max_samples, r.deduplicated, r.truncated, r.dropped_too_long,
          r.dropped_no_trained, r.train_records, r.eval_records, (r.tokens || {}).trained_tokens]]),
        el("details", {}, el("summary", {}, "the whole report"), kv(r)));
      if ((r.problems || []).length) out.push(el("pre", {}, r.problems.map((p) => JSON.stringify(p)).join("\n")));
    }
    return out.length ? out : [el("p", { class: "muted" }, "no data report yet")];
  }

  function evalTable(ev) {
    if (!ev || !Array.isArray(ev.models)) return el("p", { class: "muted" }, "no eval.json (nova eval writes it)");
    const tasks = [...new Set(ev.models.flatMap((m) => Object.keys(m.scores || {})))];
    return table(["model", ...tasks], ev.models.map((m) => [String(m.name), ...tasks.map((t) => (m.scores || {})[t] ?? "")]),
      { id: "eval" });
  }

  function preflightBlock(launch) {
    if (!launch || !launch.preflight) {
      return el("p", { class: "muted" }, "no preflight recorded: this run was not launched from this ui " +
        "(nova preflight --config <its config> checks it)");
    }
    const pf = launch.preflight;
    return el("div", {}, el("p", {}, "verdict at launch (" + launch.command + "): ",
      el("strong", { class: pf.verdict === "fail" ? "error" : pf.verdict === "warn" ? "warn" : "ok" }, String(pf.verdict))),
      table(["check", "status", "message", "fix"], (pf.checks || []).map((c) => [c.name, c.status, c.message, c.fix])));
  }

  function fingerprintBlock(fps) {
    const entries = Object.entries(fps || {});
    if (!entries.length) return el("p", { class: "muted" }, "no fingerprint yet (sealed with the first checkpoint)");
    return el("div", {}, entries.map(([stage, fp]) => el("details", {},
      el("summary", {}, stage + ": " + fp.digest), kv(fp.values))));
  }

  function smokeTable(smoke) {
    if (!smoke.length) return el("p", { class: "muted" }, "no smoke answers (smoke_prompts in the config)");
    return table(["prompt", "tuned", "base"], smoke.map((s) => [s.prompt, s.answer, s.base_answer ?? "(not kept)"]),
      { id: "smoke" });
  }

  function actions(view) {
    const s = view.status;
    const out = el("div", { class: "row" });
    const say = el("span", { id: "action-result" });
    const act = (what) => async () => {
      say.textContent = what + "...";
      const r = await post("/api/run/" + what, { path: view.rel });
      say.textContent = r.ok ? what + ": " + JSON.stringify(r.body) : r.body.error;
      say.className = r.ok ? "ok" : "error";
    };
    if (s.alive) out.append(el("button", { id: "stop", on: { click: act("stop") } }, "stop (checkpoint, then exit)"));
    else if (view.launch && s.state !== "finished") out.append(el("button", { id: "resume", on: { click: act("resume") } }, "resume"));
    out.append(say);
    return out;
  }

  async function runPage() {
    const rel = params().get("path") || "";
    const head = el("div", {}), actionsBox = el("div", {}), chartsBox = el("div", { class: "charts" });
    const rest = el("div", {});
    setMain(head, actionsBox, el("h2", {}, "Curves"), chartsBox, rest);
    const charts = {};
    let lastActions = "";
    every(async () => {
      let view;
      try { view = await api("/api/run?path=" + encodeURIComponent(rel)); } catch (e) { head.replaceChildren(failure(e)); return; }
      const s = view.status;
      head.replaceChildren(el("h1", {}, s.name + " ", stateBadge(s.state), " ",
        el("span", { class: "muted", "data-alive": s.alive ? "yes" : "no" }, s.process)));
      const key = [s.alive, s.state, !!view.launch].join();
      if (key !== lastActions) { actionsBox.replaceChildren(actions(view)); lastActions = key; }
      for (const data of view.charts) {
        if (charts[data.name]) charts[data.name].update(data);
        else charts[data.name] = chart(data);
      }
      // the server's order (loss first), also for a chart whose first point came after the others'
      chartsBox.replaceChildren(...view.charts.map((d) => charts[d.name].node));
      if (!view.charts.length) chartsBox.append(el("p", { class: "muted" }, "no metrics yet"));
      const alerts = view.alerts.map((a) => [new Date(a.time * 1000).toLocaleTimeString(), a.stage, a.step, a.kind, a.message]);
      const forgetting = Object.entries(s.forgetting || {}).map(([k, r]) =>
        [k, r.eval_loss_before, r.eval_loss_after, (r.change * 100).toFixed(1) + "%"]);
      rest.replaceChildren(
        el("h2", {}, "Status"), statusTable(s),
        el("h2", {}, "Alerts (" + alerts.length + ")"), alerts.length ? table(["time", "stage", "step", "kind", "message"], alerts, { id: "alerts" }) : el("p", { class: "muted" }, "none"),
        el("h2", {}, "Forgetting"), forgetting.length ? table(["holdout", "loss before", "loss after", "change"], forgetting) : el("p", { class: "muted" }, "no earlier phase measured"),
        el("h2", {}, "Eval"), evalTable(view.eval),
        el("h2", {}, "Smoke answers, tuned beside the base"), smokeTable(view.smoke),
        el("h2", {}, "Data report"), ...dataReports(view.data_reports),
        el("h2", {}, "Preflight"), preflightBlock(view.launch),
        el("h2", {}, "Resolved config"), view.config.error ? el("p", { class: "error" }, view.config.error) : "",
        el("pre", { id: "config" }, view.config.text || "(no config.yaml)"),
        el("h2", {}, "Fingerprint"), fingerprintBlock(view.fingerprints),
        el("h2", {}, "Model card"), el("pre", { id: "card" }, view.card || "(no model card yet)"));
      stamp();
    });
  }

  // ---- compare page ------------------------------------------------------------------------
  function overlay(views, name) {
    const xs = new Set(), series = [];
    for (const v of views) {
      const c = v.charts.find((d) => d.name === name);
      if (!c) continue;
      c.x.forEach((x) => xs.add(x));
      c.keys.forEach((k, i) => series.push({ label: v.status.name + ": " + k, x: c.x, y: c.y[i] }));
    }
    if (!series.length) return null;
    const x = [...xs].sort((a, b) => a - b);
    const y = series.map((s) => { const at = new Map(s.x.map((xx, i) => [xx, s.y[i]])); return x.map((xx) => at.get(xx) ?? null); });
    const title = views.map((v) => v.charts.find((d) => d.name === name)).find(Boolean).title;
    return { name, title, keys: series.map((s) => s.label), x, y };
  }

  function configDiff(views, all) {
    const keys = [...new Set(views.flatMap((v) => Object.keys(v.config.flat)))].sort();
    const show = (v) => (v === undefined ? "(unset)" : JSON.stringify(v));
    const rows = keys.filter((k) => all || new Set(views.map((v) => show(v.config.flat[k]))).size > 1)
      .map((k) => [k, ...views.map((v) => show(v.config.flat[k]))]);
    return table(["key", ...views.map((v) => v.status.name)], rows, { id: "config-diff" });
  }

  function answers(views) {
    const prompts = [...new Set(views.flatMap((v) => v.smoke.map((s) => s.prompt)))];
    const base = (p) => (views.flatMap((v) => v.smoke).find((s) => s.prompt === p && s.base_answer != null) || {}).base_answer;
    return table(["prompt", "base", ...views.map((v) => v.status.name)], prompts.map((p) =>
      [p, base(p) ?? "", ...views.map((v) => (v.smoke.find((s) => s.prompt === p) || {}).answer ?? "")]), { id: "answers" });
  }

  async function comparePage() {
    const picked = params().getAll("path");
    const picker = el("div", {});
    const out = el("div", {});
    setMain(el("h1", {}, "Compare"), picker, out);
    const runs = await api("/api/runs");
    const phases = runs.runs.flatMap((r) => r.phases).filter((p) => p.rel);
    const go = el("button", { on: { click: () => {
      const sel = [...picker.querySelectorAll("input:checked")].map((b) => "path=" + encodeURIComponent(b.value));
      location.href = "/compare?" + sel.join("&");
    } } }, "compare");
    picker.append(el("div", { class: "row" }, phases.map((p) => el("label", {},
      el("input", { type: "checkbox", value: p.rel, checked: picked.includes(p.rel) }), " " + p.rel)), go));
    if (picked.length < 2) { out.append(el("p", { class: "muted" }, "pick two or more runs or phases")); return; }
    const views = await Promise.all(picked.map((p) => api("/api/run?path=" + encodeURIComponent(p))));
    const box = el("div", { class: "charts" });
    for (const name of ["loss", "lr", "grad_norm", "tokens", "memory", "rewards"]) {
      const data = overlay(views, name);
      if (data) box.append(chart(data, 560).node);
    }
    const all = el("input", { type: "checkbox", id: "all-keys" });
    const diffBox = el("div", {}, configDiff(views, false));
    all.addEventListener("change", () => diffBox.replaceChildren(configDiff(views, all.checked)));
    out.append(el("h2", {}, "Curves, overlaid"), box, el("h2", {}, "Config: keys that differ"),
      el("label", {}, all, " show every key"), diffBox, el("h2", {}, "Answers beside each other"), answers(views));
    stamp();
  }

  const pages = { "/": runsPage, "/run": runPage, "/compare": comparePage, "/editor": () => NovaEditor.page() };
  (pages[location.pathname] || runsPage)().catch((e) => setMain(failure(e)));
})();
