// facedb console: plain JavaScript over the /v1 API. The key lives in this tab's sessionStorage only and is sent
// as a Bearer header; nothing is loaded from anywhere but this server.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const KEY_STORAGE = "facedb.key";

const state = { key: null, me: null, gallery: "default", cursor: null, auditCursor: null, identity: null };

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

async function api(method, path, { json, form, params } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Authorization: `Bearer ${state.key}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(url, { method, headers, body });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || { code: "http_error", message: response.statusText };
    if (response.status === 401 && path !== "/v1/me") signOut(`${error.message} [${error.code}]`);
    throw new ApiError(response.status, error.code, error.message, error.details);
  }
  return data;
}

const galleryPath = (suffix = "") => `/v1/galleries/${encodeURIComponent(state.gallery)}${suffix}`;
const can = (scope) => state.me && (state.me.scopes.includes("admin") || state.me.scopes.includes(scope));

function flash(message, kind = "info") {
  const box = $("#flash");
  box.textContent = message;
  box.className = kind;
  box.hidden = !message;
}

function fail(error) {
  flash(error instanceof ApiError ? `${error.message} [${error.code}]` : String(error), "error");
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  return td;
}

function row(values) {
  const tr = document.createElement("tr");
  for (const value of values) tr.append(value instanceof Node ? wrap(value) : cell(value));
  return tr;
}

function wrap(node) {
  const td = document.createElement("td");
  td.append(node);
  return td;
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "").replace("Z", "") : "";
}

// --- sign in -------------------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    state.me = await api("GET", "/v1/me");
  } catch (error) {
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    throw error;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#key-name").textContent = `${state.me.name} (${state.me.scopes.join(", ")})`;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#view-signin").hidden = true;
  for (const element of $$("[data-scope]")) element.hidden = !can(element.dataset.scope);
  await loadGalleryChoices();
  route();
}

function signOut(message = "") {
  state.key = null;
  state.me = null;
  sessionStorage.removeItem(KEY_STORAGE);
  $("#nav").hidden = true;
  $("#who").hidden = true;
  for (const section of $$("main > section")) section.hidden = section.id !== "view-signin";
  flash(message, message ? "error" : "info");
}

async function loadGalleryChoices() {
  const select = $("#gallery");
  const { items } = await api("GET", "/v1/galleries");
  select.replaceChildren(...items.map((g) => new Option(g.name, g.name)));
  if (!items.some((g) => g.name === state.gallery) && items.length) state.gallery = items[0].name;
  select.value = state.gallery;
}

// --- views ---------------------------------------------------------------------------------------------

const views = {
  identities: showIdentities,
  identity: showIdentity,
  search: async () => {},
  galleries: showGalleries,
  models: showModels,
  keys: showKeys,
  audit: showAudit,
};

async function route() {
  if (!state.me) return;
  const [name, arg] = (window.location.hash.slice(1) || "identities").split("/");
  const view = views[name] ? name : "identities";
  for (const section of $$("main > section")) section.hidden = section.id !== `view-${view}`;
  for (const link of $$("#nav a")) link.classList.toggle("active", link.dataset.view === view);
  flash("");
  try {
    await views[view](arg);
  } catch (error) {
    fail(error);
  }
}

async function showIdentities() {
  state.cursor = null;
  $("#identity-table tbody").replaceChildren();
  await moreIdentities();
}

async function moreIdentities() {
  const page = await api("GET", galleryPath("/identities"), {
    params: { limit: 50, cursor: state.cursor, q: $("#q").value.trim() },
  });
  const body = $("#identity-table tbody");
  for (const identity of page.items) {
    const link = document.createElement("a");
    link.href = `#identity/${identity.id}`;
    link.textContent = identity.external_id;
    body.append(row([identity.id, link, identity.display_name, identity.face_count, when(identity.created_at)]));
  }
  state.cursor = page.next_cursor;
  $("#more").hidden = page.next_cursor === null;
}

async function showIdentity(id) {
  const identity = await api("GET", galleryPath(`/identities/${id}`));
  state.identity = identity;
  $("#identity-title").textContent = `${identity.display_name || identity.external_id} (identity ${identity.id})`;
  const form = $("#edit-identity");
  form.external_id.value = identity.external_id;
  form.display_name.value = identity.display_name || "";
  form.metadata.value = JSON.stringify(identity.metadata, null, 1);
  for (const input of $$("input, textarea", form)) input.readOnly = !can("enroll");
  $("#enrol-results").replaceChildren();
  await listFaces();
}

async function listFaces() {
  const { items } = await api("GET", galleryPath(`/identities/${state.identity.id}/faces`));
  $("#faces").replaceChildren(
    ...items.map((face) => {
      const li = document.createElement("li");
      li.textContent = `face ${face.id}, enrolled ${when(face.created_at)}${face.reindexable ? "" : " (no crop kept)"} `;
      if (can("enroll")) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "Remove";
        remove.className = "danger small";
        remove.onclick = async () => {
          await api("DELETE", galleryPath(`/identities/${state.identity.id}/faces/${face.id}`)).catch(fail);
          await listFaces();
        };
        li.append(remove);
      }
      return li;
    }),
  );
}

async function showGalleries() {
  const { items } = await api("GET", "/v1/galleries");
  $("#gallery-table tbody").replaceChildren(
    ...items.map((g) => row([g.name, g.identity_count, g.face_count, when(g.created_at)])),
  );
}

async function showModels() {
  const { items } = await api("GET", "/v1/admin/models");
  $("#model-table tbody").replaceChildren(
    ...items.map((m) => row([m.id, `${m.name}@${m.version}`, m.status, m.embedding_dim, m.default_threshold.toFixed(4), m.templates])),
  );
}

async function showKeys() {
  const { items } = await api("GET", "/v1/admin/keys");
  $("#key-table tbody").replaceChildren(
    ...items.map((k) => {
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.textContent = "Revoke";
      revoke.className = "danger small";
      revoke.disabled = Boolean(k.revoked_at);
      revoke.onclick = async () => {
        if (!window.confirm(`Revoke key ${k.name}?`)) return;
        await api("DELETE", `/v1/admin/keys/${k.id}`).catch(fail);
        await showKeys();
      };
      const stateText = k.revoked_at ? `revoked ${when(k.revoked_at)}` : k.expires_at ? `expires ${when(k.expires_at)}` : "active";
      return row([k.id, k.name, `fdb_${k.prefix}_…`, k.scopes.join(", "), (k.galleries || ["all"]).join(", "), stateText, revoke]);
    }),
  );
}

async function showAudit() {
  state.auditCursor = null;
  $("#audit-table tbody").replaceChildren();
  await moreAudit();
}

async function moreAudit() {
  const filter = $("#audit-filter");
  const page = await api("GET", "/v1/admin/audit", {
    params: {
      limit: 100,
      cursor: state.auditCursor,
      action: filter.action.value.trim(),
      key: filter.key.value.trim(),
      gallery: filter.gallery.value.trim(),
    },
  });
  const body = $("#audit-table tbody");
  for (const e of page.items) {
    body.append(row([when(e.at), e.key_name, e.action, e.gallery, JSON.stringify(e.target), e.status, e.outcome, e.client]));
  }
  state.auditCursor = page.next_cursor;
  $("#audit-more").hidden = page.next_cursor === null;
}

// --- photos with their faces drawn -----------------------------------------------------------------------

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`${file.name} cannot be shown by this browser`));
    image.src = URL.createObjectURL(file);
  });
}

// A canvas of the photo (at most 480 px wide) with one labelled box per face: [{box, label, ok}].
async function drawFaces(file, faces) {
  const canvas = document.createElement("canvas");
  try {
    const image = await loadImage(file);
    const scale = Math.min(1, 480 / image.naturalWidth);
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    const g = canvas.getContext("2d");
    g.drawImage(image, 0, 0, canvas.width, canvas.height);
    g.lineWidth = 2;
    g.font = "13px sans-serif";
    for (const { box, label, ok } of faces) {
      const [x0, y0, x1, y1] = box.map((v) => v * scale);
      g.strokeStyle = ok ? "#1b8a3a" : "#c0392b";
      g.strokeRect(x0, y0, x1 - x0, y1 - y0);
      if (label) {
        const width = g.measureText(label).width + 6;
        g.fillStyle = g.strokeStyle;
        g.fillRect(x0, Math.max(0, y0 - 18), width, 18);
        g.fillStyle = "#fff";
        g.fillText(label, x0 + 3, Math.max(13, y0 - 5));
      }
    }
  } catch (error) {
    canvas.width = canvas.height = 0;
  }
  return canvas;
}

function card(canvas, lines, kind) {
  const div = document.createElement("div");
  div.className = `card ${kind}`;
  div.append(canvas);
  for (const line of lines) {
    const p = document.createElement("p");
    p.textContent = line;
    div.append(p);
  }
  return div;
}

async function enrolFiles(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("image", file, file.name);
  const results = $("#enrol-results");
  results.replaceChildren();
  let answer;
  try {
    answer = await api("POST", galleryPath(`/identities/${state.identity.id}/faces`), { form });
  } catch (error) {
    if (error.code !== "no_face_enrolled") return fail(error);
    answer = { accepted: [], rejected: error.details.rejected || [] };
    flash("No photo was accepted", "error");
  }
  const byName = new Map(files.map((f) => [f.name, f]));
  const warnings = new Map((answer.warnings || []).map((w) => [w.face_id, w]));
  for (const a of answer.accepted) {
    const faces = a.face ? [{ box: a.face.box, label: `face ${a.face_id}`, ok: true }] : [];
    const lines = [`${a.filename}: accepted as face ${a.face_id}`];
    const warning = warnings.get(a.face_id);
    if (warning) lines.push(`${warning.code}: ${warning.message}`);
    results.append(card(await drawFaces(byName.get(a.filename), faces), lines, warning ? "warned" : "accepted"));
  }
  for (const r of answer.rejected) {
    results.append(card(await drawFaces(byName.get(r.filename), []), [`${r.filename}: ${r.code}`, r.message], "rejected"));
  }
  await listFaces();
}

async function identifyFile(file) {
  const out = $("#identify-result");
  out.replaceChildren();
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const answer = await api("POST", galleryPath("/identify"), { form });
    const faces = answer.faces
      .filter((f) => f.face)
      .map((f, i) => ({
        box: f.face.box,
        label: f.match ? `${i + 1}: ${f.match.identity.display_name || f.match.identity.external_id} ${f.match.score.toFixed(3)}` : `${i + 1}: no match`,
        ok: Boolean(f.match),
      }));
    const lines = [`threshold ${answer.threshold.toFixed(4)} (${answer.threshold_source}), model ${answer.model_version}`];
    if (!answer.faces.length) lines.push("no face found");
    answer.faces.forEach((f, i) => {
      const who = f.match ? `match: ${f.match.identity.display_name || f.match.identity.external_id}` : "no match";
      lines.push(`face ${i + 1}: ${who}`);
      for (const c of f.candidates) {
        lines.push(`   ${c.score.toFixed(4)}  ${c.identity.external_id}${c.identity.display_name ? ` (${c.identity.display_name})` : ""}  identity ${c.identity.id}`);
      }
    });
    out.append(card(await drawFaces(file, faces), lines, answer.match ? "accepted" : "rejected"));
  } catch (error) {
    fail(error);
  }
}

function dropZone(zone, input, handle) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    handle([...event.dataTransfer.files]);
  });
  input.addEventListener("change", () => {
    handle([...input.files]);
    input.value = "";
  });
}

// --- wiring ----------------------------------------------------------------------------------------------

function formJson(form) {
  const text = form.metadata.value.trim();
  return {
    external_id: form.external_id.value.trim(),
    display_name: form.display_name.value.trim() || null,
    metadata: text ? JSON.parse(text) : {},
  };
}

function on(selector, event, handler) {
  $(selector).addEventListener(event, async (e) => {
    if (event === "submit") e.preventDefault();
    try {
      await handler(e);
    } catch (error) {
      fail(error);
    }
  });
}

on("#signin-form", "submit", () => signIn($("#key").value.trim()));
on("#sign-out", "click", () => signOut());
on("#gallery", "change", () => {
  state.gallery = $("#gallery").value;
  return route();
});
on("#identity-search", "submit", showIdentities);
on("#more", "click", moreIdentities);
on("#audit-filter", "submit", showAudit);
on("#audit-more", "click", moreAudit);
on("#new-identity", "submit", async (e) => {
  const created = await api("POST", galleryPath("/identities"), { json: formJson(e.target) });
  e.target.reset();
  window.location.hash = `#identity/${created.id}`;
});
on("#edit-identity", "submit", async (e) => {
  await api("PATCH", galleryPath(`/identities/${state.identity.id}`), { json: formJson(e.target) });
  flash("Saved");
});
on("#delete-identity", "click", async () => {
  if (!window.confirm(`Delete ${state.identity.external_id} and all their faces?`)) return;
  await api("DELETE", galleryPath(`/identities/${state.identity.id}`));
  window.location.hash = "#identities";
});
on("#new-gallery", "submit", async (e) => {
  await api("POST", "/v1/galleries", { json: { name: e.target.name.value.trim() } });
  e.target.reset();
  await loadGalleryChoices();
  await showGalleries();
});
on("#verify-form", "submit", async (e) => {
  const form = new FormData();
  const file = e.target.image.files[0];
  form.append("image", file, file.name);
  form.append("identity_id", e.target.identity_id.value);
  const answer = await api("POST", galleryPath("/verify"), { form });
  const faces = answer.faces.filter(Boolean).map((f) => ({ box: f.box, label: answer.match ? "match" : "no match", ok: answer.match }));
  const line = `${answer.match ? "same person" : "not this person"}: score ${answer.score.toFixed(4)}, threshold ${answer.threshold.toFixed(4)}`;
  $("#verify-result").replaceChildren(card(await drawFaces(file, faces), [line], answer.match ? "accepted" : "rejected"));
});
on("#reindex-form", "submit", async (e) => {
  const body = {};
  if (e.target.model_path.value.trim()) body.model_path = e.target.model_path.value.trim();
  if (e.target.model_version.value.trim()) body.model_version = e.target.model_version.value.trim();
  const job = await api("POST", "/v1/admin/reindex", { json: body });
  pollJob(job.id);
});
on("#new-key", "submit", async (e) => {
  const scopes = $$("input[name=scope]:checked", e.target).map((c) => c.value);
  const galleries = e.target.galleries.value.split(",").map((g) => g.trim()).filter(Boolean);
  const created = await api("POST", "/v1/admin/keys", {
    json: { name: e.target.name.value.trim(), scopes, galleries: galleries.length ? galleries : null },
  });
  const note = $("#new-secret");
  note.textContent = `Secret of ${created.name} (shown only now): ${created.secret}`;
  note.hidden = false;
  e.target.reset();
  await showKeys();
});

async function pollJob(id) {
  const job = await api("GET", `/v1/admin/reindex/${id}`);
  const eta = job.eta_s ? `, ${Math.round(job.eta_s)} s left` : "";
  $("#job").textContent = `job ${job.id} ${job.status}: ${job.done}/${job.total} faces, ${job.failed} failed${eta}${job.message ? ` — ${job.message}` : ""}`;
  if (job.status === "running") setTimeout(() => pollJob(id).catch(fail), 1000);
  else await showModels();
}

dropZone($("#enrol-drop"), $("#enrol-files"), (files) => enrolFiles(files).catch(fail));
dropZone($("#identify-drop"), $("#identify-file"), (files) => files.length && identifyFile(files[0]).catch(fail));
window.addEventListener("hashchange", route);

const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) signIn(saved).catch(() => signOut());
