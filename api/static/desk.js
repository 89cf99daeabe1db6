// The live desk: keeps a site's event list and an event's page current from the site's
// event stream (/desk/{site}/stream, server-sent events with Last-Event-ID resume).
//
// The pages stay server-rendered: when the stream says something on this page changed,
// the page is read again and the parts marked `data-live` are taken from the new copy.
// Rows of `data-live="rows"` are matched by id and `data-version`, so unchanged rows stay
// as they are and a row someone is typing or choosing in is left alone until they are
// done (the server's version checks catch anything acted on meanwhile). Without this
// script the pages work as before: reload to see changes. No libraries, nothing from
// another origin (the desk's CSP holds).
"use strict";

(() => {
  const live = document.getElementById("live");
  if (!live || !window.EventSource || !window.fetch || !window.DOMParser || !window.followSiteStream) {
    return;
  }

  const body = document.body;
  const page = live.dataset.page; // "site" or "event"
  const eventId = live.dataset.event || null;
  const streamUrl = live.dataset.streamUrl;

  let stream = null;
  let timer = null;
  let running = false;
  let again = false;
  let deferred = false;

  function setLink(kind, text) {
    live.dataset.link = kind;
    live.textContent = text;
  }

  // ------------------------------------------------------------------ what to update

  function concerns(message) {
    if (page !== "event") return true; // the site's list shows every open event
    const event = message && message.event;
    if (!event) return true;
    return event.id === eventId || event.parent === eventId; // the event or a grouped one
  }

  function editing(node) {
    // Focus inside, or a field changed from what the server rendered (a typed note, a
    // worker picked but not yet assigned): not to be replaced under the operator's hands.
    const active = document.activeElement;
    if (active && active !== body && node.contains(active) && active.matches("input, select, textarea")) {
      return true;
    }
    for (const field of node.querySelectorAll("input:not([type=hidden]), textarea")) {
      if (field.value !== field.defaultValue) return true;
    }
    for (const select of node.querySelectorAll("select")) {
      for (const option of select.options) {
        if (option.selected !== option.defaultSelected) return true;
      }
    }
    return false;
  }

  function topRegions(root) {
    return [...root.querySelectorAll("[data-live]")].filter(
      (n) => !(n.parentElement && n.parentElement.closest("[data-live]")),
    );
  }

  function place(parent, nodes) {
    // Only nodes out of place move: a row being worked in keeps its focus.
    nodes.forEach((node, i) => {
      if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
    });
    while (parent.children.length > nodes.length) parent.lastElementChild.remove();
  }

  function patchRows(old, fresh) {
    const current = new Map([...old.children].map((row) => [row.id, row]));
    const rows = [];
    for (const row of fresh.children) {
      const mine = current.get(row.id);
      if (mine && mine.dataset.version === row.dataset.version) {
        rows.push(mine);
      } else if (mine && editing(mine)) {
        rows.push(mine);
        deferred = true;
      } else {
        const node = document.importNode(row, true);
        if (row.id !== "no-events") node.classList.add("fresh");
        rows.push(node);
      }
    }
    place(old, rows);
  }

  function apply(doc) {
    const fresh = new Map(topRegions(doc).map((n) => [n.id, n]));
    for (const old of topRegions(document)) {
      const next = fresh.get(old.id);
      if (old.dataset.live === "rows" && next) {
        patchRows(old, next);
      } else if (editing(old)) {
        deferred = true;
      } else if (!next) {
        old.remove(); // e.g. the comment form of an event closed meanwhile
      } else if (old.outerHTML !== next.outerHTML) {
        old.replaceWith(document.importNode(next, true));
      }
    }
    if (deferred) body.dataset.deferred = "true";
  }

  // ------------------------------------------------------------------ reading the page

  async function refresh() {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    deferred = false;
    delete body.dataset.deferred;
    try {
      const response = await fetch(window.location.pathname, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (response.redirected && new URL(response.url).pathname.startsWith("/desk/login")) {
        window.location.reload(); // the session ended: the page itself asks for a login
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      apply(new DOMParser().parseFromString(await response.text(), "text/html"));
      body.dataset.liveUpdates = String(Number(body.dataset.liveUpdates || 0) + 1);
      if (stream && stream.isOpen()) setLink("live", "live");
    } catch (err) {
      setLink("offline", "not updated: reload the page");
    } finally {
      running = false;
      if (again) {
        again = false;
        schedule(0);
      }
    }
  }

  function schedule(delay = 200) {
    // A burst of changes is one read of the page.
    if (timer === null) timer = setTimeout(refresh, delay);
  }

  document.addEventListener("focusout", () => {
    if (deferred) schedule(300); // a row left alone while it was worked in
  });
  stream = window.followSiteStream(streamUrl, {
    onSync: () => schedule(0),
    onChange: (message) => concerns(message) && schedule(),
    setLink,
  });
})();
