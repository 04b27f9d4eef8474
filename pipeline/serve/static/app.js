// The search page of `mmx serve`: every action is a call to the JSON API, results drawn as cards.
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function targets() {
  return [...document.querySelectorAll("#targets input:checked")].map((c) => c.value);
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function card(hit) {
  const div = document.createElement("div");
  div.className = "hit " + hit.modality;
  div.dataset.row = hit.row;
  let media;
  if (hit.media && hit.modality === "image") {
    media = document.createElement("img");
    media.alt = `${hit.modality} ${hit.id}`;
  } else if (hit.media && (hit.modality === "audio" || hit.modality === "video")) {
    media = document.createElement(hit.modality);
    media.controls = true;
    media.preload = "metadata";
  } else {
    media = document.createElement("blockquote");
    media.textContent = hit.text || `(${hit.modality}: no media)`;
  }
  if (hit.media && media.tagName !== "BLOCKQUOTE") media.src = hit.media;
  div.appendChild(media);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = `<span class="rank">#${hit.rank}</span><span class="score"></span><span class="label"></span>`;
  meta.querySelector(".score").textContent = hit.score.toFixed(3);
  meta.querySelector(".label").textContent = hit.label || "-";
  div.appendChild(meta);
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = `${hit.modality} · ${hit.id}`;
  div.appendChild(id);
  const more = document.createElement("button");
  more.textContent = "More like this";
  more.onclick = () => run(() => search({ like: hit.row }), `like ${hit.id}`);
  div.appendChild(more);
  return div;
}

function show(result, what) {
  const box = $("results");
  box.replaceChildren(...result.hits.map(card));
  status(`${result.hits.length} hits for ${what}`);
}

function search(query) {
  return call("/api/search", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...query, targets: targets(), k: Number($("k").value) || 12 }),
  });
}

async function run(action, what) {
  status(`searching ${what} ...`);
  try {
    show(await action(), what);
  } catch (err) {
    status(err.message, true);
  }
}

$("text-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (text) run(() => search({ text }), `"${text}"`);
};

$("like-form").onsubmit = (e) => {
  e.preventDefault();
  const option = $("like").selectedOptions[0];
  if (option) run(() => search({ like: Number(option.value) }), `like ${option.textContent}`);
};

$("file-form").onsubmit = (e) => {
  e.preventDefault();
  const file = $("file").files[0];
  if (!file) return status("choose a file first", true);
  const form = new FormData();
  form.append("file", file);
  form.append("targets", targets().join(","));
  form.append("k", String(Number($("k").value) || 12));
  run(() => call("/api/search/upload", { method: "POST", body: form }), file.name);
};

async function start() {
  try {
    info = await call("/api/info");
  } catch (err) {
    return status(err.message, true);
  }
  $("run").textContent = info.run;
  $("about").textContent = `${info.items} gallery items (${Object.entries(info.targets)
    .map(([m, n]) => `${n} ${m}`).join(", ")}); queries in ${info.query_modalities.join(", ")}`;
  for (const name of Object.keys(info.targets)) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" name="target" value=""> <span></span>`;
    label.querySelector("input").value = name;
    label.querySelector("input").checked = true;
    label.querySelector("span").textContent = name;
    $("targets").appendChild(label);
  }
  const items = (await call("/api/items?limit=500")).items;
  $("like").replaceChildren(...items.map((it) => {
    const o = document.createElement("option");
    o.value = it.row;
    o.textContent = `${it.modality} ${it.id}${it.label ? ` (${it.label})` : ""}`;
    return o;
  }));
  status("ready");
}

start();
