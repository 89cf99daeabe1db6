// The wall: the site's grid map (inline SVG from the registry's polygons) and its newest
// events, re-read from state.json whenever the site's event stream reports a change.
// No libraries, no tiles, nothing from another origin (the desk's CSP holds).
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const ALERTING = new Set(["critical", "high"]);
  const FLASH_MS = 60_000; // a new high/critical event flashes this long, or until acknowledged
  const LIST_MAX = 60;
  const VIEW_W = 1000;

  const body = document.body;
  const stateUrl = body.dataset.stateUrl;
  const streamUrl = body.dataset.streamUrl;
  const $ = (id) => document.getElementById(id);

  let state = null;
  let known = null; // ids of the events seen so far (null before the first state)
  const flashUntil = new Map();
  let selectedCell = null;
  let refreshTimer = null;
  let audio = null;
  let muted = false;

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs = {}, text = null) {
    const node = tag.startsWith("svg:")
      ? document.createElementNS(SVG, tag.slice(4))
      : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    if (text !== null) node.textContent = text;
    return node;
  }

  function timeFormat() {
    const options = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
    try {
      return new Intl.DateTimeFormat("en-GB", { ...options, timeZone: state?.timezone || undefined });
    } catch (err) {
      return new Intl.DateTimeFormat("en-GB", options);
    }
  }

  const human = (text) => String(text || "").replaceAll("_", " ");

  function setLink(kind, text) {
    const link = $("link");
    link.dataset.link = kind;
    link.textContent = text;
  }

  // ------------------------------------------------------------------ sound

  function ensureAudio() {
    if (!audio) {
      try {
        audio = new AudioContext();
      } catch (err) {
        return null;
      }
    }
    if (audio.state === "suspended") audio.resume().catch(() => {});
    return audio;
  }

  function showSound() {
    const button = $("sound");
    const running = audio && audio.state === "running";
    button.setAttribute("aria-pressed", String(running && !muted));
    button.textContent = muted ? "Sound off" : running ? "Sound on" : "Click for sound";
  }

  function beep(severity) {
    body.dataset.beeps = String(Number(body.dataset.beeps || 0) + 1);
    if (muted) return;
    const ctx = ensureAudio();
    if (!ctx) return;
    const start = ctx.currentTime + 0.02;
    const pulses = severity === "critical" ? [0, 0.22, 0.44] : [0];
    for (const offset of pulses) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "square";
      osc.frequency.value = severity === "critical" ? 880 : 660;
      gain.gain.setValueAtTime(0.0001, start + offset);
      gain.gain.exponentialRampToValueAtTime(0.25, start + offset + 0.01);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.16);
      osc.connect(gain).connect(ctx.destination);
      osc.start(start + offset);
      osc.stop(start + offset + 0.18);
    }
  }

  // ------------------------------------------------------------------ the map

  function projection(cells, devices) {
    const points = cells.flatMap((c) => c.polygon).concat(devices.map((d) => [d.lon, d.lat]));
    if (points.length === 0) return null;
    const lons = points.map((p) => p[0]);
    const lats = points.map((p) => p[1]);
    const minLon = Math.min(...lons);
    const maxLat = Math.max(...lats);
    const minLat = Math.min(...lats);
    const kx = Math.cos((((maxLat + minLat) / 2) * Math.PI) / 180); // metres east per degree, relative
    const width = (Math.max(...lons) - minLon) * kx || 1e-6;
    const height = maxLat - minLat || 1e-6;
    const scale = VIEW_W / width;
    const viewH = height * scale;
    const pad = 0.03 * Math.max(VIEW_W, viewH);
    return {
      viewBox: `${-pad} ${-pad} ${VIEW_W + 2 * pad} ${viewH + 2 * pad}`,
      xy: ([lon, lat]) => [(lon - minLon) * kx * scale, (maxLat - lat) * scale],
      unit: Math.max(VIEW_W, viewH) / 1000,
    };
  }

  function cellFill(cell) {
    if (cell.severity) return cell.severity;
    if (cell.state === "shelved" || cell.state === "out_of_service") return "aside";
    return "ok";
  }

  function drawMap() {
    const svg = $("map");
    const proj = projection(state.cells, state.devices);
    svg.replaceChildren();
    if (!proj) return;
    svg.setAttribute("viewBox", proj.viewBox);
    const cellLayer = el("svg:g", { class: "cells" });
    const labelLayer = el("svg:g", { class: "labels" });
    for (const cell of state.cells) {
      const pts = cell.polygon.map(proj.xy);
      const g = el("svg:g", {
        class: "cell",
        id: `cell-${cell.id}`,
        "data-cell": cell.id,
        "data-fill": cellFill(cell),
        "data-state": cell.state,
        "data-severity": cell.severity || "none",
        tabindex: 0,
      });
      const polygon = el("svg:polygon", { points: pts.map((p) => p.join(",")).join(" ") });
      polygon.appendChild(el("svg:title", {}, `${cell.name} (${cell.id})`));
      g.appendChild(polygon);
      g.addEventListener("click", () => selectCell(cell.id));
      g.addEventListener("keydown", (e) => e.key === "Enter" && selectCell(cell.id));
      cellLayer.appendChild(g);

      const xs = pts.map((p) => p[0]);
      const ys = pts.map((p) => p[1]);
      const cx = (Math.min(...xs) + Math.max(...xs)) / 2;
      const top = Math.min(...ys);
      const w = Math.max(...xs) - Math.min(...xs);
      const h = Math.max(...ys) - top;
      const size = Math.max(13 * proj.unit, Math.min(30 * proj.unit, (w * 0.92) / (0.55 * cell.name.length)));
      const label = el("svg:g", { class: "cell", "data-label": cell.id });
      const nameY = top + Math.min(h * 0.2, size * 1.5);
      label.appendChild(
        el("svg:text", { x: cx, y: nameY, "font-size": size, "text-anchor": "middle", class: "name" }, cell.name),
      );
      if (cell.open > 0) {
        const big = Math.min(size * 1.5, 40 * proj.unit);
        label.appendChild(
          el("svg:text", { x: cx, y: nameY + big * 1.3, "font-size": big, "text-anchor": "middle", class: "count" }, `${cell.open} open`),
        );
      }
      labelLayer.appendChild(label);
    }
    const deviceLayer = el("svg:g", { class: "devices" });
    for (const device of state.devices) {
      const [x, y] = proj.xy([device.lon, device.lat]);
      const marker = el("svg:circle", {
        cx: x,
        cy: y,
        r: (device.state === "ok" ? 6 : 9) * proj.unit,
        class: `dev state-${device.state}`,
        id: `device-${device.id}`,
        "data-state": device.state,
      });
      marker.appendChild(el("svg:title", {}, `${device.label || device.id} (${device.kind}): ${human(device.state)}`));
      deviceLayer.appendChild(marker);
    }
    svg.append(cellLayer, deviceLayer, labelLayer);
  }

  // ------------------------------------------------------------------ the lists

  function eventItem(event, fmt, cellNames, prefix = "wall-event") {
    const li = el("li", {
      id: `${prefix}-${event.id}`,
      "data-event": event.id,
      class: `ev sev-${event.severity}`,
      "data-state": event.state,
      "data-cell": event.cell || "",
    });
    const link = el("a", { href: `/desk/events/${event.id}`, class: "title" }, event.title);
    li.append(
      el("span", { class: "sev" }, event.severity),
      link,
      el("span", { class: "time" }, fmt.format(new Date(event.raised_ms))),
    );
    const meta = [
      cellNames.get(event.cell) || event.cell || "no cell",
      human(event.state),
      event.assignee ? `→ ${event.assignee}` : null,
      event.count > 1 ? `×${event.count}` : null,
      event.parent ? "in a flood group" : null,
    ].filter(Boolean);
    li.appendChild(el("span", { class: "meta" }, meta.join(" · ")));
    return li;
  }

  function drawEvents() {
    const fmt = timeFormat();
    const cellNames = new Map(state.cells.map((c) => [c.id, c.name]));
    const top = state.events.filter((e) => !e.parent);
    const list = $("events");
    list.replaceChildren(...top.slice(0, LIST_MAX).map((e) => eventItem(e, fmt, cellNames)));
    if (top.length === 0) list.appendChild(el("li", { class: "empty" }, "No open events."));
    $("event-count").textContent = `(${top.length} open)`;

    const summary = $("summary");
    summary.replaceChildren();
    for (const severity of ["critical", "high", "medium", "low"]) {
      const n = top.filter((e) => e.severity === severity).length;
      if (n > 0) summary.appendChild(el("span", { class: `count sev-${severity}` }, `${n} ${severity}`));
    }
    const alarms = state.devices.filter((d) => d.state !== "ok").length;
    summary.appendChild(el("span", { class: "count" }, `${alarms}/${state.devices.length} devices not ok`));
    $("site-name").textContent = state.name || state.site;
    document.title = `${state.name || state.site} · GridWatch wall`;
  }

  function selectCell(id) {
    selectedCell = id;
    drawPanel();
  }

  function drawPanel() {
    const panel = $("cell-panel");
    document.querySelectorAll(".cell.selected").forEach((n) => n.classList.remove("selected"));
    const cell = state && state.cells.find((c) => c.id === selectedCell);
    if (!cell) {
      panel.hidden = true;
      return;
    }
    $(`cell-${cell.id}`)?.classList.add("selected");
    $("cell-title").textContent = `${cell.name} (${cell.id})`;
    const worker = cell.worker;
    $("cell-worker").textContent = worker
      ? `Grid worker: ${worker.name}${worker.phone ? ` · ${worker.phone}` : ""}`
      : "No grid worker";
    const fmt = timeFormat();
    const names = new Map([[cell.id, cell.name]]);
    const events = state.events.filter((e) => e.cell === cell.id);
    const list = $("cell-events");
    list.replaceChildren(...events.map((e) => eventItem(e, fmt, names, "cell-event")));
    if (events.length === 0) list.appendChild(el("li", { class: "empty" }, "No open events in this cell."));
    panel.hidden = false;
  }

  function applyFlash() {
    const now = Date.now();
    const flashingCells = new Set();
    for (const event of state ? state.events : []) {
      const on = (flashUntil.get(event.id) || 0) > now && event.state === "active_unacknowledged";
      document.querySelectorAll(`li[data-event="${event.id}"]`).forEach((n) => n.classList.toggle("flash", on));
      if (on && event.cell) flashingCells.add(event.cell);
      if (!on) flashUntil.delete(event.id);
    }
    document.querySelectorAll("#map .cell[data-cell]").forEach((n) => {
      n.classList.toggle("flash", flashingCells.has(n.dataset.cell));
    });
  }

  function render(next) {
    state = next;
    const ids = new Set(state.events.map((e) => e.id));
    if (known !== null) {
      let loudest = null;
      for (const event of state.events) {
        if (known.has(event.id) || !ALERTING.has(event.severity)) continue;
        if (event.state !== "active_unacknowledged") continue;
        flashUntil.set(event.id, Date.now() + FLASH_MS);
        if (loudest === null || event.severity === "critical") loudest = event.severity;
      }
      if (loudest !== null) beep(loudest);
    }
    known = known === null ? ids : new Set([...known, ...ids]);
    drawMap();
    drawEvents();
    drawPanel();
    applyFlash();
    tick(); // the clock shows the site's time zone, known from the first state on
    body.dataset.renders = String(Number(body.dataset.renders || 0) + 1);
  }

  // ------------------------------------------------------------------ live

  async function refresh() {
    refreshTimer = null;
    const response = await fetch(stateUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.redirected && new URL(response.url).pathname.startsWith("/desk/login")) {
      window.location.reload(); // the session ended: the page itself asks for a login
      return;
    }
    if (!response.ok) throw new Error(`state: HTTP ${response.status}`);
    render(await response.json());
  }

  function scheduleRefresh(delay = 150) {
    if (refreshTimer === null) {
      refreshTimer = setTimeout(() => refresh().catch(() => setLink("offline", "no data")), delay);
    }
  }

  function tick() {
    $("clock").textContent = timeFormat().format(new Date());
  }

  $("cell-close").addEventListener("click", () => selectCell(null));
  document.addEventListener("keydown", (e) => e.key === "Escape" && selectCell(null));
  $("sound").addEventListener("click", () => {
    const running = audio && audio.state === "running";
    if (running && !muted) {
      muted = true;
    } else {
      muted = false;
      ensureAudio()?.resume().then(showSound, showSound);
    }
    showSound();
  });
  setInterval(tick, 1000);
  setInterval(applyFlash, 2000);
  setInterval(() => scheduleRefresh(0), 60_000); // belt and braces: the stream is the live path
  tick();
  showSound();
  // Its first message is a sync: the state is read after the stream is open.
  window.followSiteStream(streamUrl, {
    onSync: () => scheduleRefresh(0),
    onChange: () => scheduleRefresh(),
    setLink,
    beforeReopen: refresh,
  });
})();
