// Following a site's event stream (/desk/{site}/stream: server-sent events with
// Last-Event-ID resume), shared by the live desk (desk.js) and the wall (wall.js).
//
// `followSiteStream(streamUrl, handlers)` opens the stream and keeps it open:
//   handlers.onSync()         after (re)connecting: anything may have changed meanwhile
//   handlers.onChange(data)   one change; `data` is the parsed message, or null
//   handlers.setLink(kind, text)   connecting / live / reconnecting / offline
//   handlers.beforeReopen()   optional: a promise awaited before reopening a stream the
//                              server refused for good (e.g. re-read the page's state)
// The browser itself retries a dropped stream with Last-Event-ID; a stream refused for
// good (a login page, an error) is reopened here after 3 s with ?last_id=. Returns a
// function that closes the stream.
"use strict";

window.followSiteStream = (streamUrl, handlers) => {
  let source = null;
  let lastId = null;
  let reopenTimer = null;

  function connect() {
    if (source) source.close();
    const url = lastId ? `${streamUrl}?last_id=${encodeURIComponent(lastId)}` : streamUrl;
    source = new EventSource(url);
    source.onopen = () => handlers.setLink("live", "live");
    source.addEventListener("sync", (e) => {
      // The first one too: whatever changed between the page's render and the stream.
      lastId = e.lastEventId || lastId;
      handlers.onSync();
    });
    source.addEventListener("change", (e) => {
      lastId = e.lastEventId || lastId;
      let message = null;
      try {
        message = JSON.parse(e.data);
      } catch (err) {
        message = null;
      }
      handlers.onChange(message);
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CONNECTING) {
        handlers.setLink("reconnecting", "reconnecting…"); // the browser retries
        return;
      }
      handlers.setLink("offline", "offline");
      source.close();
      clearTimeout(reopenTimer);
      const reopen = handlers.beforeReopen || (() => Promise.resolve());
      reopenTimer = setTimeout(() => reopen().then(connect, () => source.onerror()), 3000);
    };
  }

  window.addEventListener("pagehide", () => source && source.close());
  handlers.setLink("connecting", "connecting…");
  connect();
  return {
    isOpen: () => Boolean(source && source.readyState === EventSource.OPEN),
    close: () => source && source.close(),
  };
};
