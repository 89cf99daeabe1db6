// The grid worker's page: sort by distance with the phone's position (when it shares
// it), and check photos before they are sent. No libraries, nothing from elsewhere.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ASKED = "gw-worker-located";

  function locate(force) {
    if (!navigator.geolocation) return;
    if (!force && sessionStorage.getItem(ASKED)) return; // asked once this session
    sessionStorage.setItem(ASKED, "1");
    navigator.geolocation.getCurrentPosition(
      (pos) => {
        const url = new URL(location.href);
        url.searchParams.set("lat", pos.coords.latitude.toFixed(6));
        url.searchParams.set("lon", pos.coords.longitude.toFixed(6));
        url.searchParams.delete("done");
        location.replace(url.toString());
      },
      () => {
        const order = $("order");
        if (order && force) order.append(" (your position is not available)");
      },
      { enableHighAccuracy: true, timeout: 10_000, maximumAge: 60_000 },
    );
  }

  const order = $("order");
  if (order && order.dataset.located === "no") {
    locate(false);
    const button = $("locate");
    if (button) button.addEventListener("click", () => locate(true));
  }

  const input = $("photos");
  const check = $("photo-check");
  if (input && check) {
    input.addEventListener("change", () => {
      const most = Number(input.dataset.maxBytes);
      const files = Array.from(input.files || []);
      const big = files.filter((f) => f.size > most).map((f) => f.name);
      const words = [`${files.length} photo(s) chosen`];
      if (files.length > Number(input.dataset.maxFiles)) words.push(`at most ${input.dataset.maxFiles}`);
      if (big.length) words.push(`too large: ${big.join(", ")}`);
      check.textContent = words.join(" · ");
      check.dataset.ok = String(big.length === 0 && files.length <= Number(input.dataset.maxFiles));
    });
  }
})();
