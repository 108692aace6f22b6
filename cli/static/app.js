"use strict";
// The search page: one query at a time through POST api/search, the results as a grid of
// thumbnails from api/thumb/{id}. Plain DOM, no framework, no build step.

const $ = (id) => document.getElementById(id);
let info = null;
let lastQuery = null; // {file} or {id}: searched again when k or re-rank change
let lastSettings = ""; // k and re-rank as that search sent them
let latest = 0; // the newest search; answers to older ones are dropped
let previewUrl = null;

async function loadInfo() {
  const response = await fetch("api/info");
  info = await response.json();
  const top1 = info.top1_error == null ? "" : `, top-1 error ${(100 * info.top1_error).toFixed(1)}%`;
  $("facts").textContent =
    `${info.run}: ${info.classes.length} classes, ${info.count} images indexed, ` +
    `${info.bits}-bit codes (${info.index} index), checkpoint epoch ${info.epoch}${top1}`;
  for (const input of [$("k"), $("rerank")]) input.max = info.count;
  $("k").value = Math.min(Number($("k").value), info.count);
  // The picker appears only when there is something to pick: the training set is "".
  if (info.galleries.length) {
    for (const name of ["", ...info.galleries]) {
      $("gallery").add(new Option(name || "training set", name));
    }
    $("gallery-picker").hidden = false;
  }
}

function settings() {
  return `${$("k").value} ${$("rerank").value}`;
}

function thumbUrl(id) {
  const gallery = $("gallery").value;
  return `api/thumb/${id}` + (gallery ? `?gallery=${encodeURIComponent(gallery)}` : "");
}

function showPreview(query) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = query.file ? URL.createObjectURL(query.file) : null;
  $("preview").src = previewUrl || thumbUrl(query.id);
  $("preview").hidden = false;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function search(query) {
  if (!$("controls").reportValidity()) return;
  if (query.file && query.file.size > info.max_upload_mb * 2 ** 20) {
    return setStatus(`${query.file.name} is larger than the server takes (${info.max_upload_mb} MB)`, true);
  }
  lastQuery = query;
  lastSettings = settings();
  const mine = ++latest;
  const body = new FormData();
  if (query.file) body.append("image", query.file, query.file.name || "pasted image");
  else body.append("id", query.id);
  body.append("k", $("k").value);
  body.append("rerank", $("rerank").value);
  body.append("gallery", $("gallery").value);
  showPreview(query);
  setStatus("searching…");
  const started = performance.now();
  let reply;
  try {
    const response = await fetch("api/search", { method: "POST", body });
    reply = await response.json();
    if (!response.ok) throw new Error(reply.error || response.statusText);
  } catch (e) {
    if (mine === latest) setStatus(e.message, true);
    return;
  }
  if (mine !== latest) return;
  const ms = Math.round(performance.now() - started);
  const order = reply.rerank ? `re-ranked by fc7 distance among the ${reply.rerank} nearest` : "by Hamming distance";
  setStatus(`${reply.queries[0].results.length} results ${order} (${reply.bits}-bit codes), ${ms} ms`);
  render(reply.queries[0].results, reply.rerank > 0);
  document.body.dataset.searches = String(latest); // lets a test wait for a new answer
}

function render(results, reranked) {
  $("results").replaceChildren(...results.map((r) => card(r, reranked)));
}

function card(r, reranked) {
  const item = document.createElement("li");
  Object.assign(item.dataset, { id: r.id, rank: r.rank, hamming: r.hamming });
  const button = document.createElement("button");
  button.type = "button";
  button.title = `${r.path}\nclick to search from this image`;
  const img = document.createElement("img");
  img.src = thumbUrl(r.id);
  img.alt = r.class;
  img.loading = "lazy";
  const caption = document.createElement("span");
  caption.className = "caption";
  const title = line("title", `#${r.rank} `);
  title.append(line("class", r.class));
  caption.append(title, line("distance", `Hamming ${r.hamming}`));
  if (reranked) caption.append(line("distance", `fc7 ${r.distance.toFixed(2)}`));
  button.append(img, caption);
  button.addEventListener("click", () => search({ id: r.id }));
  item.append(button);
  return item;
}

function line(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function firstImage(files) {
  return Array.from(files || []).find((f) => f.type.startsWith("image/"));
}

function searchFile(file) {
  if (file) search({ file });
  else setStatus("that is not an image file", true);
}

$("file").addEventListener("change", () => {
  searchFile($("file").files[0]);
  $("file").value = ""; // choosing the same file again is a new search
});
const drop = $("drop");
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    $("file").click();
  }
});
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  searchFile(firstImage(e.dataTransfer.files));
});
document.addEventListener("paste", (e) => {
  const file = firstImage(e.clipboardData && e.clipboardData.files);
  if (file) searchFile(file);
});
for (const input of [$("k"), $("rerank")]) {
  // "change" also fires on leaving a field edited before the last search: search only when
  // the values differ from that search's.
  input.addEventListener("change", () => lastQuery && settings() !== lastSettings && search(lastQuery));
}
$("gallery").addEventListener("change", () => {
  // An id names an image of the collection it came from: only an upload can follow.
  if (lastQuery && lastQuery.file) return search(lastQuery);
  lastQuery = null;
  $("results").replaceChildren();
  $("preview").hidden = true;
  setStatus("");
});
$("controls").addEventListener("submit", (e) => e.preventDefault());

loadInfo().catch((e) => setStatus(`cannot reach the server: ${e.message}`, true));
