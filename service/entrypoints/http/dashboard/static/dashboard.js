// The stock dashboard's script (docs/dashboard.md). No framework: htmx swaps the
// server-rendered fragments (escaped by Jinja2), this file adds the token to every
// request, keeps the page live from the WebSocket and sends the forms to the API as
// JSON. It never puts data into innerHTML: figures go in with textContent.
"use strict";

(function () {
  const TOKEN_KEY = "stock-dashboard-token";
  const API = "/api/inventory";
  const main = document.getElementById("main");
  const page = main.dataset.page;

  // ------------------------------------------------------------------ the token

  function token() {
    return window.localStorage.getItem(TOKEN_KEY) || "";
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    if (token()) headers.Authorization = "Bearer " + token();
    return headers;
  }

  function notice(text) {
    const box = document.getElementById("notice");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function setWho(text) {
    document.getElementById("who").textContent = text;
  }

  // Every htmx request carries the token as a header: never a cookie, so another
  // site's page cannot make the browser send it (no CSRF).
  document.body.addEventListener("htmx:configRequest", function (event) {
    if (token()) event.detail.headers.Authorization = "Bearer " + token();
  });

  // A fragment refused or failed: say why where it would have been.
  document.body.addEventListener("htmx:responseError", function (event) {
    const xhr = event.detail.xhr;
    const message = errorText(xhr.status, xhr.responseText);
    const target = event.detail.target;
    if (target) {
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = message;
      target.replaceChildren(p);
    }
    if (xhr.status === 401) notice(message + " Paste a token above.");
  });

  // How many fragments are on their way (body[data-pending]): the browser tests wait
  // for 0 before they act on a page that is being read again.
  let pending = 0;
  function inFlight(delta) {
    pending = Math.max(0, pending + delta);
    document.body.dataset.pending = String(pending);
  }
  document.body.addEventListener("htmx:beforeRequest", function () { inFlight(1); });
  ["htmx:afterOnLoad", "htmx:sendError", "htmx:timeout", "htmx:sendAbort"].forEach(function (name) {
    document.body.addEventListener(name, function () { inFlight(-1); });
  });

  document.body.addEventListener("htmx:afterSwap", function (event) {
    afterFragment(event.detail.target);
  });

  function errorText(status, body) {
    let code = "", message = "";
    try {
      const parsed = JSON.parse(body);
      code = parsed.code || "";
      message = parsed.message || "";
    } catch (_) {
      message = "";
    }
    const what = status === 401 || status === 403 || status === 409 ? "Refused" : "Failed";
    return what + " (" + status + (code ? " " + code : "") + ")" + (message ? ": " + message : ".");
  }

  async function whoAmI() {
    const answer = await fetch("/dashboard/data/whoami", { headers: authHeaders() });
    if (!answer.ok) {
      const text = errorText(answer.status, await answer.text());
      setWho("no valid token");
      document.body.dataset.scope = "none";
      applyScope(document);
      notice(text + (answer.status === 401 ? " Paste a token above." : ""));
      return false;
    }
    const who = await answer.json();
    notice("");
    setWho(who.tokenName ? "token " + who.tokenName + " (" + who.scope + ")" : "no token: reading only");
    document.body.dataset.scope = who.scope || "none";
    applyScope(document);
    return true;
  }

  const RANK = { none: 0, read: 1, write: 2, admin: 3 };

  /** A form the token may not send is disabled and says why (the API decides anyway). */
  function applyScope(root) {
    const scope = document.body.dataset.scope || "none";
    root.querySelectorAll("[data-needs]").forEach(function (form) {
      const needs = form.dataset.needs;
      const allowed = RANK[scope] >= RANK[needs];
      form.querySelectorAll("button").forEach(function (button) {
        if (button.dataset.keep !== "true") button.disabled = !allowed || button.dataset.closed === "true";
      });
      let note = form.querySelector(".needs");
      if (!note) {
        note = document.createElement("p");
        note.className = "needs hint";
        form.appendChild(note);
      }
      note.textContent = allowed ? "" : "Needs a " + needs + " token" +
        (scope === "none" ? "." : " (this one is " + scope + ").");
      note.hidden = allowed;
    });
  }

  document.getElementById("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const input = document.getElementById("token-input");
    const value = input.value.trim();
    if (value) window.localStorage.setItem(TOKEN_KEY, value);
    input.value = "";
    start();
  });

  document.getElementById("token-forget").addEventListener("click", function () {
    window.localStorage.removeItem(TOKEN_KEY);
    start();
  });

  document.getElementById("jump-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const id = document.getElementById("jump-variant").value.trim();
    if (id) window.location.href = "/dashboard/variants/" + encodeURIComponent(id);
  });

  // ------------------------------------------------------------------ API calls

  /** Sends JSON to the API with the token; resolves to {ok, status, body}. */
  async function send(method, path, body) {
    const answer = await fetch(API + path, {
      method: method,
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await answer.text();
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch (_) {
      parsed = null;
    }
    return { ok: answer.ok, status: answer.status, body: parsed, text: text };
  }

  function say(form, text, kind) {
    const result = form.querySelector(".result");
    if (!result) return;
    result.textContent = text;
    result.dataset.kind = kind || "";
  }

  function refresh(selector, eventName) {
    const element = document.querySelector(selector);
    if (element && window.htmx) window.htmx.trigger(element, eventName || "dashboard:refresh");
  }

  // ------------------------------------------------------------------ live

  let socket = null;
  let retryDelay = 1000;
  let refreshTimer = null;

  function live(state, text) {
    const badge = document.getElementById("live");
    badge.hidden = false;
    badge.dataset.state = state;
    badge.textContent = "live: " + text;
  }

  /** Read the lists again at most once a second, however fast the events come. */
  function refreshSoon(selectors) {
    if (refreshTimer || selectors.length === 0) return;
    refreshTimer = window.setTimeout(function () {
      refreshTimer = null;
      selectors.forEach(function (selector) { refresh(selector); });
    }, 1000);
  }

  function liveQuery() {
    // The alerts say when a variant joins the overview's list (it fell to its threshold
    // or reorder point) or its anomalies; its own changes say when it may leave.
    if (page === "overview") return "events=changes,low,reorder,replenished,anomaly";
    if (page === "variant") return "variantId=" + encodeURIComponent(main.dataset.variantId);
    return null;
  }

  function connect() {
    const query = liveQuery();
    if (!query || socket) return;
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + window.location.host + API + "/ws?" + query, ["stock.v1"]);
    socket = ws;
    live("connecting", "connecting");
    ws.addEventListener("open", function () {
      // The token as the first message, not in the URL or a header a proxy would log.
      // When reads need no token the server ignores it.
      if (token()) ws.send(JSON.stringify({ type: "auth", token: token() }));
    });
    ws.addEventListener("message", function (message) {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      if (event.type === "subscribed") {
        retryDelay = 1000;
        live("on", "on");
        // Anything that changed while connecting: read the page again once.
        refreshSoon(refreshTargets());
      } else if (event.type === "stock.changed") {
        onChange(event.data);
      } else if (event.type !== "heartbeat") { // stock.low, .reorder, .replenished, .anomaly
        refreshSoon(["#overview"]);
      }
    });
    ws.addEventListener("close", function (closed) {
      socket = null;
      if (closed.code === 4401 || closed.code === 4403) {
        live("off", "refused (" + closed.reason + ")");
        return; // a new token starts it again
      }
      live("off", "reconnecting");
      window.setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 15000);
    });
  }

  /** The audit trail follows live changes only while it shows the newest page: one
   *  reading older pages is not sent back to the first. */
  function auditTargets() {
    return document.querySelector("#audit [data-first-page='false']") ? [] : ["#audit"];
  }

  function refreshTargets() {
    if (page === "overview") return ["#overview"];
    if (page === "variant") return ["#levels"].concat(auditTargets());
    return [];
  }

  function onChange(data) {
    // The figures at once, in place...
    let shown = false;
    document.querySelectorAll("[data-variant-id]").forEach(function (element) {
      if (element.dataset.variantId !== data.variant_id) return;
      shown = true;
      if (element.dataset.version && Number(element.dataset.version) >= data.version) return;
      element.dataset.version = String(data.version);
      ["on_hand", "reserved", "available", "version"].forEach(function (field) {
        const cell = element.querySelector('[data-field="' + field + '"]');
        if (cell) cell.textContent = String(data[field]);
      });
      if (element.id === "level") {
        element.dataset.onHand = String(data.on_hand);
        element.dataset.available = String(data.available);
        pristineForms(data.version);
      }
    });
    // ...then the lists: the audit trail and chart of this variant, or the overview's
    // list, which a variant shown there may leave (one not shown joins with an alert).
    if (page === "variant") {
      refreshSoon(auditTargets());
      chartSoon();
    } else if (shown) {
      refreshSoon(["#overview"]);
    }
  }

  // ------------------------------------------------------------------ variant page

  /** The version a form is based on: the one shown when the user started on it. */
  function pristineForms(version) {
    document.querySelectorAll(".write-form").forEach(function (form) {
      if (form.dataset.dirty !== "true") form.elements.expectedVersion.value = String(version);
    });
  }

  function levelElement() {
    return document.getElementById("level");
  }

  function setUpVariantForms() {
    const variantId = main.dataset.variantId;
    document.querySelectorAll(".write-form").forEach(function (form) {
      form.addEventListener("input", function () { form.dataset.dirty = "true"; });
      form.addEventListener("submit", async function (event) {
        event.preventDefault();
        const kind = form.dataset.kind;
        const line = {
          variantId: variantId,
          quantity: Number(form.elements.quantity.value),
        };
        const reason = form.elements.reason.value.trim();
        if (reason) line.reason = reason;
        if (form.elements.supplierId && form.elements.supplierId.value.trim()) {
          line.supplierId = form.elements.supplierId.value.trim();
        }
        const version = form.elements.expectedVersion.value;
        if (version !== "") line.expectedVersion = Number(version);
        say(form, "Sending…");
        const answer = await send(kind === "restock" ? "POST" : "PUT", "/" + kind, { updates: [line] });
        if (answer.ok) {
          const change = answer.body.changes[0];
          say(form, "Done: on hand " + change.onHand + ", available " + change.available +
            ", version " + change.version + ".", "ok");
          form.dataset.dirty = "false";
          form.elements.quantity.value = "";
          form.elements.reason.value = "";
          onChange({ variant_id: change.variantId, on_hand: change.onHand, reserved: change.reserved,
                     available: change.available, version: change.version });
        } else if (answer.body && answer.body.code === "version_conflict") {
          await conflict(form, variantId);
        } else {
          say(form, errorText(answer.status, answer.text), "error");
        }
      });
    });
  }

  async function conflict(form, variantId) {
    // Read the figure now, show it, and base the form on it: sending again is a
    // decision made on the new figure.
    const answer = await fetch(API + "/logs/" + encodeURIComponent(variantId) + "?limit=1",
                               { headers: authHeaders() });
    let text = "Someone changed this since you read it; nothing was applied.";
    if (answer.ok) {
      const log = await answer.json();
      const last = log.entries[0];
      if (last) {
        text += " Here is the new figure: on hand " + last.onHandAfter + ", available " +
          (last.onHandAfter - last.reservedAfter) + " (version " + log.version + ", " +
          last.changeType + " by " + last.actor + "). Check it and send again.";
        onChange({ variant_id: variantId, on_hand: last.onHandAfter, reserved: last.reservedAfter,
                   available: last.onHandAfter - last.reservedAfter, version: log.version });
      }
      form.elements.expectedVersion.value = String(log.version);
    }
    say(form, text, "conflict");
  }

  function afterFragment(target) {
    if (!target) return;
    applyScope(target);
    if (target.id === "levels") {
      const level = levelElement();
      if (level) pristineForms(Number(level.dataset.version));
    }
    if (target.id === "policy") setUpPolicyForm();
    if (target.id === "count") setUpCount();
    if (target.id === "report") loadChartImages(target);
  }

  function setUpPolicyForm() {
    const form = document.getElementById("policy-form");
    if (!form) return;
    const initial = {};
    Array.from(form.elements).forEach(function (input) {
      if (input.name) initial[input.name] = input.value;
    });
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const body = {};
      Array.from(form.elements).forEach(function (input) {
        if (!input.name || input.value === initial[input.name]) return;
        const value = input.value.trim();
        if (value === "") body[input.name] = null;
        else body[input.name] = input.type === "number" ? Number(value) : value;
      });
      if (Object.keys(body).length === 0) {
        say(form, "Nothing changed.");
        return;
      }
      say(form, "Saving…");
      const answer = await send("PUT", "/variants/" + encodeURIComponent(form.dataset.variantId) +
                                "/policy", body);
      if (answer.ok) {
        refresh("#policy", "dashboard:refresh-policy");
        refresh("#levels");
        document.getElementById("policy-saved").textContent = "Policy saved.";
      } else {
        say(form, errorText(answer.status, answer.text), "error");
      }
    });
  }

  // The chart: on hand and available over the window as a step function (Chart.js). The
  // server sends the level at the window's start, each change, and the current level at
  // its end; a stepped line ("before": the level moves AT each change's time) draws it.
  let chart = null;
  let chartTimer = null;

  function chartSoon() {
    if (chartTimer) return;
    chartTimer = window.setTimeout(function () { chartTimer = null; drawChart(); }, 1000);
  }

  /** The caption: how many changes the window holds, or since when the level holds. */
  function chartCaption(series) {
    if (series.changes === 0) {
      return "No change in the window; the level is as of " +
        (series.levelSince ? new Date(series.levelSince).toLocaleString() : "its creation") + ".";
    }
    return series.changes + (series.changes === 1 ? " change" : " changes") + " in the window" +
      (series.truncated ? " (the latest " + series.limit + " only)" : "") + ".";
  }

  async function drawChart() {
    const canvas = document.getElementById("level-chart");
    const note = document.getElementById("chart-note");
    if (!canvas || !window.Chart) return;
    const hours = document.getElementById("chart-window").value;
    const answer = await fetch("/dashboard/data/variants/" + encodeURIComponent(main.dataset.variantId) +
                               "/levels?hours=" + encodeURIComponent(hours), { headers: authHeaders() });
    if (!answer.ok) {
      note.textContent = errorText(answer.status, await answer.text());
      return;
    }
    const series = await answer.json();
    const from = Date.parse(series.from), to = Date.parse(series.to);
    const onHand = [], available = [];
    series.points.forEach(function (point) {
      const t = Date.parse(point.t);
      onHand.push({ x: t, y: point.onHand });
      available.push({ x: t, y: point.available });
    });
    note.textContent = chartCaption(series);
    // A dot on each change only: the level at the start (unless the series was cut to
    // its latest changes and starts at one) and the current level at the end are not.
    const radius = function (context) {
      const opening = !series.truncated && context.dataIndex === 0;
      return opening || context.dataIndex === context.dataset.data.length - 1 ? 0 : 2;
    };
    const data = {
      datasets: [
        { label: "On hand", data: onHand, stepped: "before", borderColor: "#1f5fa8", backgroundColor: "#1f5fa8", pointRadius: radius },
        { label: "Available", data: available, stepped: "before", borderColor: "#c0502a", backgroundColor: "#c0502a", pointRadius: radius },
      ],
    };
    if (chart) {
      chart.data = data;
      chart.options.scales.x.min = from;
      chart.options.scales.x.max = to;
      chart.update();
      return;
    }
    chart = new window.Chart(canvas, {
      type: "line",
      data: data,
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: true,
        scales: {
          x: { type: "linear", min: from, max: to,
               ticks: { maxTicksLimit: 6, callback: function (value) { return new Date(value).toLocaleString(); } } },
          y: { beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: { tooltip: { callbacks: { title: function (items) {
          return items.length ? new Date(items[0].parsed.x).toLocaleString() : "";
        } } } },
      },
    });
  }

  // ------------------------------------------------------------------ counts

  function setUpOpenCount() {
    const form = document.getElementById("open-count-form");
    if (!form) return;
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const body = { blind: form.elements.blind.checked };
      const product = form.elements.productId.value.trim();
      const variants = form.elements.variantIds.value.split(/[\s,]+/).filter(Boolean);
      if (product) body.productId = product;
      else if (variants.length) body.variantIds = variants;
      else {
        say(form, "Name a product or some variants.", "error");
        return;
      }
      const reason = form.elements.reason.value.trim();
      if (reason) body.reason = reason;
      say(form, "Opening…");
      const answer = await send("POST", "/counts", body);
      if (answer.ok) {
        window.location.href = "/dashboard/counts/" + encodeURIComponent(answer.body.countId);
      } else {
        say(form, errorText(answer.status, answer.text), "error");
      }
    });
  }

  function showLine(card, line) {
    const figures = {
      expected: line.expected === null ? (line.counted !== null ? "hidden" : "–") : String(line.expected),
      variance: line.variance === null ? "–" : (line.variance > 0 ? "+" : "") + line.variance,
      tolerance: line.tolerancePercent === null ? "–" : String(line.tolerancePercent),
      within: line.withinTolerance === null ? "–" : (line.withinTolerance ? "within tolerance" : "OUT of tolerance"),
    };
    Object.keys(figures).forEach(function (field) {
      const cell = card.querySelector('[data-field="' + field + '"]');
      if (cell) cell.textContent = figures[field];
    });
    card.dataset.within = line.withinTolerance === null ? "unknown" : (line.withinTolerance ? "yes" : "no");
  }

  function setUpCount() {
    const body = document.getElementById("count-body");
    if (!body) return;
    const countId = body.dataset.countId;
    const path = "/counts/" + encodeURIComponent(countId);
    body.querySelectorAll("form.count-line").forEach(function (form) {
      form.addEventListener("submit", async function (event) {
        event.preventDefault();
        const counted = form.elements.counted.value;
        if (counted === "") return;
        say(form, "Saving…");
        const answer = await send("PUT", path + "/lines",
                                  { lines: [{ variantId: form.dataset.variantId, counted: Number(counted) }] });
        if (!answer.ok) {
          say(form, errorText(answer.status, answer.text), "error");
          return;
        }
        const line = answer.body.lines.find(function (l) { return l.variantId === form.dataset.variantId; });
        showLine(form.closest(".line"), line);
        say(form, "Saved: " + line.counted + ".", "ok");
        // On to the next line, as on paper.
        const forms = Array.from(body.querySelectorAll("form.count-line"));
        const next = forms[forms.indexOf(form) + 1];
        if (next) next.elements.counted.focus();
        else document.getElementById("count-apply").focus();
      });
    });
    const result = document.getElementById("count-result");
    const apply = document.getElementById("count-apply");
    const approve = document.getElementById("count-approve");
    const cancel = document.getElementById("count-cancel");
    if (!apply) return;
    async function applying(withApproval) {
      result.textContent = "Applying…";
      const answer = await send("POST", path + "/apply", withApproval ? { approve: true } : {});
      if (answer.ok) {
        result.textContent = "Applied.";
        refresh("#count");
      } else if (answer.body && answer.body.code === "approval_required") {
        result.textContent = answer.body.message + " An admin token may approve them.";
        approve.hidden = false;
        approve.focus();
      } else {
        result.textContent = errorText(answer.status, answer.text);
      }
    }
    apply.addEventListener("click", function () { applying(false); });
    approve.addEventListener("click", function () { applying(true); });
    cancel.addEventListener("click", async function () {
      const answer = await send("POST", path + "/cancel", {});
      if (answer.ok) refresh("#count");
      else result.textContent = errorText(answer.status, answer.text);
    });
  }

  // ------------------------------------------------------------------ reports

  /** Report charts come with the token too: fetched, then shown from memory. */
  async function loadChartImages(root) {
    const images = root.querySelectorAll("img[data-src]");
    for (const image of images) {
      const answer = await fetch(image.dataset.src, { headers: authHeaders() });
      if (!answer.ok) {
        image.alt = errorText(answer.status, await answer.text());
        continue;
      }
      image.src = URL.createObjectURL(await answer.blob());
    }
  }

  // ------------------------------------------------------------------ start

  function loadFragments() {
    document.querySelectorAll(".fragment").forEach(function (element) {
      window.htmx.trigger(element, "dashboard:load");
    });
  }

  let started = false;

  async function start() {
    const allowed = await whoAmI();
    if (socket) socket.close(1000);
    if (!allowed) {
      if (liveQuery()) live("off", "off");
      return;
    }
    loadFragments();
    if (page === "variant") drawChart();
    if (!started) {
      started = true;
      if (page === "variant") {
        setUpVariantForms();
        document.getElementById("chart-window").addEventListener("change", drawChart);
      }
      if (page === "counts") setUpOpenCount();
    }
    connect();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
