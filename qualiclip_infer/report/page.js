// The report's gallery, filter and large view. Plain ES2017, no libraries: the page opens from disk, offline.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const rows = data.rows.map((cells, index) => {
    const row = { index };
    data.columns.forEach((name, k) => { row[name] = cells[k]; });
    return row;
  });
  const PAGE = 240; // tiles added at a time: a 100,000-image page stays quick to open and to filter
  const gallery = document.getElementById("gallery");
  const more = document.getElementById("more");
  const minInput = document.getElementById("min-score");
  const maxInput = document.getElementById("max-score");
  const count = document.getElementById("shown-count");
  let shown = [];
  let rendered = 0;

  const byPath = (a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
  const orders = {
    worst: (a, b) => a.score - b.score || byPath(a, b),
    best: (a, b) => b.score - a.score || byPath(a, b),
    path: byPath,
  };

  function bound(input, fallback) {
    const value = parseFloat(input.value);
    return Number.isFinite(value) ? value : fallback;
  }

  function details(row) {
    const parts = [`score ${row.score.toFixed(4)}`];
    if (row.width) parts.push(`${row.width}\u00d7${row.height}`);
    if (row.mos !== null) parts.push(`${data.mos_label} ${row.mos.toFixed(2)}`);
    if (row.percentile !== null) parts.push(`${ordinal(Math.round(row.percentile))} percentile`);
    if (row.human !== null) parts.push(`human MOS ${row.human.toFixed(2)}`);
    return parts;
  }

  function ordinal(n) {
    const tens = n % 100, ones = n % 10;
    const suffix = tens > 10 && tens < 14 ? "th" : ones === 1 ? "st" : ones === 2 ? "nd" : ones === 3 ? "rd" : "th";
    return n + suffix;
  }

  function tile(row) {
    const figure = document.createElement("figure");
    figure.className = "tile";
    figure.tabIndex = 0;
    figure.setAttribute("role", "listitem");
    figure.dataset.index = row.index;
    figure.dataset.path = row.path;
    figure.dataset.score = row.score;
    const box = document.createElement("div");
    box.className = "thumb";
    if (row.thumbnail) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.src = row.thumbnail;
      img.alt = row.path;
      box.appendChild(img);
    } else {
      box.innerHTML = '<span class="none">no preview</span>';
    }
    const strip = document.createElement("div");
    strip.className = "strip";
    strip.style.background = row.colour;
    const caption = document.createElement("figcaption");
    const [score, ...rest] = details(row);
    caption.innerHTML = '<span class="score"></span> <span class="rest"></span><span class="name"></span>';
    caption.querySelector(".score").textContent = score.replace("score ", "");
    caption.querySelector(".rest").textContent = rest.join(" \u00b7 ");
    caption.querySelector(".name").textContent = row.path.split(/[\\/]/).pop();
    caption.title = row.path;
    figure.append(box, strip, caption);
    return figure;
  }

  function render() {
    const low = bound(minInput, 0), high = bound(maxInput, 1);
    const order = document.querySelector('input[name="order"]:checked').value;
    shown = rows.filter((row) => row.score >= low && row.score <= high).sort(orders[order]);
    gallery.replaceChildren();
    rendered = 0;
    renderMore();
    count.textContent = `${shown.length} of ${rows.length} scored images shown`;
  }

  function renderMore() {
    const fragment = document.createDocumentFragment();
    const end = Math.min(shown.length, rendered + PAGE);
    for (; rendered < end; rendered++) fragment.appendChild(tile(shown[rendered]));
    gallery.appendChild(fragment);
  }

  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting) && rendered < shown.length) renderMore();
  }, { rootMargin: "800px" }).observe(more);

  document.querySelectorAll('input[name="order"]').forEach((input) => input.addEventListener("change", render));
  minInput.addEventListener("input", render);
  maxInput.addEventListener("input", render);
  document.getElementById("reset-range").addEventListener("click", () => {
    minInput.value = 0; maxInput.value = 1; render();
  });
  document.querySelectorAll("#histogram .bar").forEach((bar) => bar.addEventListener("click", () => {
    minInput.value = bar.dataset.low; maxInput.value = bar.dataset.high; render();
    gallery.scrollIntoView({ behavior: "smooth" });
  }));

  // Gallery keys: arrows move the focus (up and down by one row of the grid), Enter or Space opens.
  function columns() {
    const tiles = gallery.children;
    let n = 1;
    while (n < tiles.length && tiles[n].offsetTop === tiles[0].offsetTop) n++;
    return n;
  }

  function focusTile(position) {
    while (position >= rendered && rendered < shown.length) renderMore();
    const target = gallery.children[Math.max(0, Math.min(position, rendered - 1))];
    if (target) { target.focus(); target.scrollIntoView({ block: "nearest" }); }
  }

  gallery.addEventListener("keydown", (event) => {
    const current = event.target.closest(".tile");
    if (!current) return;
    const position = Array.prototype.indexOf.call(gallery.children, current);
    const steps = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() };
    if (event.key in steps) {
      event.preventDefault();
      focusTile(position + steps[event.key]);
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openViewer(rows[current.dataset.index]);
    }
  });
  gallery.addEventListener("click", (event) => {
    const current = event.target.closest(".tile");
    if (current) openViewer(rows[current.dataset.index]);
  });
  document.querySelectorAll(".disagreements .tile").forEach((element) => {
    const row = rows[element.dataset.index];
    if (row.thumbnail) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.src = row.thumbnail;
      img.alt = row.path;
      element.querySelector(".thumb").replaceChildren(img);
    }
    const open = () => openViewer(rows[element.dataset.index], true);
    element.addEventListener("click", open);
    element.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); open(); }
    });
  });

  // The large view.
  const viewer = document.getElementById("viewer");
  const photo = document.getElementById("viewer-photo");
  const map = document.getElementById("viewer-map");
  const mapControls = document.getElementById("map-controls");
  const mapToggle = document.getElementById("map-toggle");
  const opacity = document.getElementById("map-opacity");
  const pathInput = document.getElementById("viewer-path");
  let sequence = [];
  let at = -1;
  let opener = null;

  function openViewer(row, alone) {
    if (viewer.hidden) opener = document.activeElement;
    sequence = !alone && shown.includes(row) ? shown : [row];
    at = sequence.indexOf(row);
    show();
    viewer.hidden = false;
    document.getElementById("viewer-close").focus();
  }

  function show() {
    const row = sequence[at];
    viewer.dataset.path = row.path;
    document.getElementById("viewer-title").textContent = row.path;
    photo.src = row.view || row.thumbnail || "";
    photo.alt = row.path;
    map.hidden = !row.map || !mapToggle.checked;
    map.src = row.map || "";
    map.style.opacity = opacity.value;
    mapControls.hidden = !row.map;
    document.getElementById("viewer-details").textContent =
      details(row).join(" \u00b7 ") + (sequence.length > 1 ? ` \u00b7 ${at + 1} of ${sequence.length}` : "");
    pathInput.value = row.path;
    document.getElementById("copy-path").textContent = "copy path";
  }

  function step(delta) {
    if (sequence.length < 2) return;
    at = (at + delta + sequence.length) % sequence.length;
    show();
  }

  function closeViewer() {
    viewer.hidden = true;
    if (opener && opener.focus) opener.focus();
  }

  document.getElementById("viewer-prev").addEventListener("click", () => step(-1));
  document.getElementById("viewer-next").addEventListener("click", () => step(1));
  document.getElementById("viewer-close").addEventListener("click", closeViewer);
  mapToggle.addEventListener("change", show);
  opacity.addEventListener("input", () => { map.style.opacity = opacity.value; });
  document.getElementById("copy-path").addEventListener("click", () => {
    pathInput.select();
    const done = () => { document.getElementById("copy-path").textContent = "copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(pathInput.value).then(done, () => { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (viewer.hidden || event.target === pathInput && event.key !== "Escape") return;
    if (event.key === "Escape") { event.preventDefault(); closeViewer(); }
    else if (event.key === "ArrowRight") { event.preventDefault(); step(1); }
    else if (event.key === "ArrowLeft") { event.preventDefault(); step(-1); }
    else if ((event.key === "m" || event.key === "M") && !mapControls.hidden) {
      mapToggle.checked = !mapToggle.checked; show();
    }
  });

  render();
})();
