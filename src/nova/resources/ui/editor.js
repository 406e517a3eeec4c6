// nova ui: the config editor. Validates as you type with nova's own loader (the server runs it),
// runs preflight, and launches nova train; the server refuses anything the CLI would refuse.
"use strict";

const NovaEditor = (() => {
  const { el, api, post, table, stateBadge, runLink, setMain, stamp, failure, params } = Nova;

  function problemsView(result) {
    if (result.ok) return el("p", { class: "ok", id: "valid" }, result.lines.join(" "));
    return el("div", { id: "invalid" },
      el("pre", { class: "error", id: "problems" }, result.lines.join("\n")),
      el("ul", { class: "problems" }, result.problems.filter((p) => p.line).map((p) =>
        el("li", { "data-line": p.line }, "line " + p.line + ": " + p.text))));
  }

  function preflightView(report) {
    if (report.error) return el("p", { class: "error", id: "preflight-verdict", "data-verdict": "fail" }, report.error);
    const cls = report.verdict === "fail" ? "error" : report.verdict === "warn" ? "warn" : "ok";
    return el("div", {}, el("p", {}, "verdict: ",
      el("strong", { class: cls, id: "preflight-verdict", "data-verdict": report.verdict }, report.verdict)),
      table(["check", "status", "message", "fix"], (report.checks || []).map((c) => [c.name, c.status, c.message, c.fix])));
  }

  function launchesView(launches) {
    if (!launches.length) return el("p", { class: "muted" }, "nothing launched from this ui yet");
    return el("div", { id: "launches" }, launches.map((l) => el("div", { class: "launch", "data-id": l.id },
      el("p", {}, el("strong", {}, l.id), " ", l.command, " ", el("span", { class: "launch-state" }, l.state),
        " pid " + l.pid, " ", ...(l.run_dirs || []).map((d) => el("span", { class: "muted" }, " " + d))),
      el("pre", {}, (l.log_tail || []).slice(-15).join("\n") || "(no output yet)"))));
  }

  async function page() {
    const configs = await api("/api/configs");
    const start = params().get("path") || configs.files[0] || "new.yaml";
    const pick = el("select", { id: "config-file" }, configs.files.map((f) => el("option", { value: f, selected: f === start }, f)));
    const name = el("input", { id: "config-name", value: start, size: 40 });
    const text = el("textarea", { id: "config-text", spellcheck: "false" });
    const check = el("div", { id: "check" }, el("p", { class: "muted" }, "validating..."));
    const pf = el("div", { id: "preflight" });
    const result = el("div", { id: "launch-result" });
    const launches = el("div", {});
    const flags = ["fresh", "force", "resume_with_changes"].map((f) => el("input", { type: "checkbox", id: "flag-" + f, value: f }));
    let timer = null, seq = 0;

    async function validate() {
      const mine = ++seq;
      const r = await post("/api/validate", { path: name.value, text: text.value });
      if (mine !== seq) return;  // a newer keystroke's answer wins
      check.replaceChildren(r.ok ? problemsView(r.body) : failure(new Error(r.body.error)));
    }
    async function load(file) {
      const r = await api("/api/config?path=" + encodeURIComponent(file));
      name.value = file;
      text.value = r.text;
      validate();
    }
    text.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(validate, 300); });
    name.addEventListener("change", validate);
    pick.addEventListener("change", () => load(pick.value));

    const preflightButton = el("button", { id: "run-preflight", on: { click: async () => {
      pf.replaceChildren(el("p", { class: "muted" }, "running nova preflight..."));
      const r = await post("/api/preflight", { path: name.value, text: text.value });
      pf.replaceChildren(r.ok ? preflightView(r.body) : failure(new Error(r.body.error)));
    } } }, "preflight");
    const launchButton = el("button", { id: "launch", on: { click: async () => {
      result.replaceChildren(el("p", { class: "muted" }, "checking, running preflight, then starting nova train..."));
      const body = { path: name.value, text: text.value };
      flags.forEach((f) => { body[f.value] = f.checked; });
      const r = await post("/api/launch", body);
      result.replaceChildren(r.ok
        ? el("p", { class: "ok", id: "launched" }, "started: " + r.body.command + " (pid " + r.body.pid + ") ",
          ...r.body.run_dirs.map((d) => el("span", { class: "muted" }, d + " ")),
          ...(r.body.notes || []).map((n) => el("span", { class: "warn" }, " " + n)))
        : el("p", { class: "error", id: "refused" }, r.body.error));
      refresh();
    } } }, "save and launch nova train");

    async function refresh() {
      try { launches.replaceChildren(launchesView((await api("/api/launches")).launches)); } catch (e) { launches.replaceChildren(failure(e)); }
      stamp();
    }

    setMain(el("h1", {}, "Config editor"),
      el("p", { class: "muted" }, "configs in " + configs.dir + "; relative data paths are relative to where nova ui runs"),
      el("div", { class: "row" }, "open ", pick, " save as ", name),
      el("div", { class: "editor" }, text, el("div", {}, el("h2", {}, "Validation (nova's loader)"), check,
        el("h2", {}, "Preflight"), preflightButton, pf)),
      el("h2", {}, "Launch"),
      el("div", { class: "row" }, ...flags.flatMap((f) => [el("label", {}, f, " --" + f.value.replaceAll("_", "-"))]), launchButton),
      el("p", { class: "muted" }, "starting again resumes an interrupted run (same rules as nova train: a live run, a " +
        "changed config or a failing preflight is refused)"), result,
      el("h2", {}, "Launched from this ui"), launches);
    if (configs.files.includes(start)) await load(start); else validate();
    refresh();
    setInterval(refresh, 3000);
  }

  return { page };
})();
