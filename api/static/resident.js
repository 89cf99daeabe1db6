// The residents' report page: tap the map (or use the phone's position) to say where;
// the tap picks the cell under it. No libraries, nothing from elsewhere.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const map = $("site-map");
  const lon = $("lon");
  const lat = $("lat");
  const cell = $("cell");
  const text = $("point-text");
  if (!lon || !lat || !cell || !text) return;

  function show(lonValue, latValue, how) {
    lon.value = lonValue.toFixed(6);
    lat.value = latValue.toFixed(6);
    text.textContent = `${how}: ${latValue.toFixed(5)}, ${lonValue.toFixed(5)}`;
  }

  function choose(cellId) {
    cell.value = cellId || "";
    if (!map) return;
    for (const polygon of map.querySelectorAll("polygon")) {
      polygon.classList.toggle("chosen", polygon.dataset.cell === cellId);
    }
  }

  function pinAt(x, y) {
    let pin = $("pin");
    if (!pin) {
      pin = document.createElementNS(SVG, "circle");
      pin.id = "pin";
      pin.setAttribute("class", "pin");
      pin.setAttribute("r", map.dataset.radius);
      map.append(pin);
    }
    pin.setAttribute("cx", x.toFixed(1));
    pin.setAttribute("cy", y.toFixed(1));
  }

  if (map) {
    const d = map.dataset;
    const minLon = Number(d.minLon);
    const maxLat = Number(d.maxLat);
    const kx = Number(d.kx);
    const scale = Number(d.scale);
    map.addEventListener("click", (event) => {
      const ctm = map.getScreenCTM();
      if (!ctm) return;
      const at = new DOMPoint(event.clientX, event.clientY).matrixTransform(ctm.inverse());
      pinAt(at.x, at.y);
      show(minLon + at.x / (kx * scale), maxLat - at.y / scale, "Point");
      const target = event.target;
      choose(target instanceof SVGPolygonElement ? target.dataset.cell : "");
    });
    if (cell.value) choose(cell.value);
  }

  cell.addEventListener("change", () => {
    lon.value = "";
    lat.value = "";
    const pin = $("pin");
    if (pin) pin.remove();
    text.textContent = cell.value ? "The cell you chose." : "Tap the map where it is, or use your position.";
    choose(cell.value);
  });

  const here = $("here");
  if (here) {
    here.addEventListener("click", () => {
      if (!navigator.geolocation) {
        text.textContent = "This phone does not share its position: pick a cell or tap the map.";
        return;
      }
      text.textContent = "Finding your position…";
      navigator.geolocation.getCurrentPosition(
        (pos) => {
          choose(""); // the hub finds the cell the position is in
          show(pos.coords.longitude, pos.coords.latitude, "Your position");
          if (map) {
            const d = map.dataset;
            const x = (pos.coords.longitude - Number(d.minLon)) * Number(d.kx) * Number(d.scale);
            const y = (Number(d.maxLat) - pos.coords.latitude) * Number(d.scale);
            pinAt(x, y);
          }
        },
        () => {
          text.textContent = "Your position is not available: pick a cell or tap the map.";
        },
        { enableHighAccuracy: true, timeout: 10_000, maximumAge: 60_000 },
      );
    });
  }
})();
