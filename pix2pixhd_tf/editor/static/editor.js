// The pix2pixHD editor page: plain JavaScript against the JSON API of pix2pixhd_tf/editor/app.py.
//
// The server holds the scene (label + instance maps, styles, undo history) of a session; this page keeps
// the session id and a backup of the edited maps in localStorage, draws the colour-coded label map and the
// generated image, and turns pointer strokes and buttons into edits.
//
// For tests and scripts: <body data-busy="0|1" data-revision="N" data-image-revision="N"> tell when the
// page has shown revision N of the scene, and window.editor exposes the current state.
"use strict";

(() => {
  const SESSION_KEY = "pix2pixhd_editor.session";
  const BACKUP_KEY = "pix2pixhd_editor.backup";
  const BACKUP_MAX_CHARS = 3_500_000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    labelCanvas: $("label-canvas"),
    overlay: $("overlay-canvas"),
    generated: $("generated"),
  };

  const app = {
    config: null,
    state: null, // the last session state from the server
    tool: "select",
    classId: 0,
    radius: 8,
    selected: null, // region id
    selectionImage: null, // overlay of the selected region
    labelImage: null,
    busy: 0,
    stroke: null, // {points: [[x, y], ...]} while painting
    hover: null,
    shownRevision: -1,
  };
  window.editor = app;

  // ------------------------------------------------------------------ helpers
  async function api(method, path, body) {
    const options = { method, headers: {} };
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.body = JSON.stringify(body);
      options.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, options);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.error ? data.error : `HTTP ${response.status}: ${text.slice(0, 200)}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function showError(error) {
    const box = $("error");
    box.textContent = error && error.message ? error.message : String(error);
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function setBusy(delta) {
    app.busy = Math.max(0, app.busy + delta);
    document.body.dataset.busy = app.busy > 0 ? "1" : "0";
  }

  // Run user actions one after the other; errors go to the error box.
  let queue = Promise.resolve();
  function enqueue(action) {
    setBusy(+1);
    queue = queue
      .then(action)
      .catch(showError)
      .finally(() => setBusy(-1));
    return queue;
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error(`could not load ${url}`));
      image.src = url;
    });
  }

  function classInfo(id) {
    return app.config.classes[id];
  }

  function colorOf(id) {
    const [r, g, b] = classInfo(id).color;
    return `rgb(${r}, ${g}, ${b})`;
  }

  function sessionPath(suffix) {
    return `/api/sessions/${encodeURIComponent(app.state.session)}${suffix}`;
  }

  function regionById(id) {
    return app.state ? app.state.regions.find((r) => r.id === id) || null : null;
  }

  // ------------------------------------------------------------------ showing a state
  async function show(state, { selected } = {}) {
    const newScene = !app.state || app.state.session !== state.session;
    app.state = state;
    localStorage.setItem(SESSION_KEY, state.session);
    document.body.dataset.revision = String(state.revision);
    $("scene-name").textContent = `— ${state.name} (${state.width}×${state.height})`;
    for (const canvas of [ui.labelCanvas, ui.overlay]) {
      if (canvas.width !== state.width || canvas.height !== state.height) {
        canvas.width = state.width;
        canvas.height = state.height;
      }
    }
    $("undo").disabled = !state.can_undo;
    $("redo").disabled = !state.can_redo;
    const downloads = {
      "download-image": "/image.png?download=1",
      "download-label": "/label.png",
      "download-instance": "/instance.png",
      "download-styles": "/styles.json",
    };
    for (const [id, suffix] of Object.entries(downloads)) {
      $(id).href = sessionPath(suffix);
      $(id).removeAttribute("aria-disabled");
    }
    if (newScene) app.selected = null;
    if (selected !== undefined && selected !== null) app.selected = selected;
    if (app.selected !== null && !regionById(app.selected)) app.selected = null;

    const revision = state.revision;
    const [labelImage] = await Promise.all([
      loadImage(sessionPath(`/label_color.png?rev=${revision}`)),
      refreshSelection(),
      refreshGenerated(revision),
    ]);
    if (app.state.revision !== revision) return; // a newer state is on its way
    app.labelImage = labelImage;
    drawLabel();
    renderInspector();
    app.shownRevision = revision;
    document.body.dataset.imageRevision = String(revision);
    scheduleBackup(state);
  }

  async function refreshGenerated(revision) {
    const started = performance.now();
    const response = await fetch(sessionPath(`/image.png?rev=${revision}`));
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `the image could not be generated (HTTP ${response.status})`);
    }
    const blob = await response.blob();
    if (app.state.revision !== revision) return;
    const url = URL.createObjectURL(blob);
    await new Promise((resolve, reject) => {
      ui.generated.onload = resolve;
      ui.generated.onerror = () => reject(new Error("the generated image could not be shown"));
      ui.generated.src = url;
    });
    const ms = response.headers.get("X-Generate-Ms");
    const total = performance.now() - started;
    $("latency").textContent = ms ? `(model ${Math.round(+ms)} ms, round trip ${Math.round(total)} ms)` : "";
  }

  async function refreshSelection() {
    if (app.selected === null) {
      app.selectionImage = null;
    } else {
      app.selectionImage = await loadImage(
        sessionPath(`/regions/${app.selected}/mask.png?rev=${app.state.revision}`)
      ).catch(() => null);
    }
    drawOverlay();
  }

  function drawLabel() {
    const ctx = ui.labelCanvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, ui.labelCanvas.width, ui.labelCanvas.height);
    if (app.labelImage) ctx.drawImage(app.labelImage, 0, 0);
  }

  function drawOverlay() {
    const ctx = ui.overlay.getContext("2d");
    ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
    if (app.selectionImage) ctx.drawImage(app.selectionImage, 0, 0);
    const paintClass = strokeClass();
    if (app.stroke && app.stroke.points.length) {
      ctx.strokeStyle = ctx.fillStyle = colorOf(paintClass);
      ctx.lineWidth = 2 * app.radius;
      ctx.lineCap = ctx.lineJoin = "round";
      const pts = app.stroke.points;
      ctx.beginPath();
      ctx.arc(pts[0][0] + 0.5, pts[0][1] + 0.5, app.radius, 0, 2 * Math.PI);
      ctx.fill();
      ctx.beginPath();
      ctx.moveTo(pts[0][0] + 0.5, pts[0][1] + 0.5);
      for (const [x, y] of pts.slice(1)) ctx.lineTo(x + 0.5, y + 0.5);
      ctx.stroke();
    }
    if (app.hover && app.tool !== "select") {
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#fff";
      ctx.beginPath();
      ctx.arc(app.hover[0] + 0.5, app.hover[1] + 0.5, app.radius, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  // ------------------------------------------------------------------ the inspector
  function renderInspector() {
    const region = app.selected !== null ? regionById(app.selected) : null;
    $("inspector").hidden = !region;
    if (!region) return;
    const kind = region.thing ? `#${region.id}` : "(stuff)";
    $("sel-title").textContent = `${region.class_name} ${kind}`;
    const [x0, y0, x1, y1] = region.bbox;
    $("sel-info").textContent = `id ${region.id}, ${region.pixels} pixels, box ${x0},${y0}–${x1},${y1}`;
    $("relabel-class").value = String(region.class_id);

    const panel = $("style-panel");
    const swatches = $("swatches");
    swatches.replaceChildren();
    const backend = app.config.backend;
    const clusters = classInfo(region.class_id).clusters;
    if (!backend.styles || clusters === 0) {
      $("style-random").disabled = $("style-sampled").disabled = true;
      $("style-note").textContent = !backend.feat_num
        ? "This model takes no styles (trained without --instance_feat)."
        : !backend.styles
          ? "No cluster bank is loaded, so styles cannot be chosen."
          : `The ${region.class_name} class has no style clusters.`;
      return;
    }
    $("style-random").disabled = $("style-sampled").disabled = false;
    for (let k = 0; k < clusters; k++) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.cluster = String(k);
      button.title = `style cluster ${k}`;
      button.setAttribute("aria-pressed", String(region.style === k));
      const img = document.createElement("img");
      img.src = sessionPath(`/regions/${region.id}/styles/${k}.png?rev=${app.state.revision}`);
      img.alt = `cluster ${k}`;
      button.append(img);
      button.addEventListener("click", () => edit({ op: "restyle", region: region.id, style: k }));
      swatches.append(button);
    }
    $("style-note").textContent =
      region.style === null
        ? "Style: sampled (seeded); pick a cluster to fix it."
        : Array.isArray(region.style)
          ? "Style: an explicit feature vector."
          : `Style: cluster ${region.style}.`;
    panel.hidden = false;
  }

  // ------------------------------------------------------------------ edits
  function edit(body, { select } = {}) {
    clearError();
    return enqueue(async () => {
      const state = await api("POST", sessionPath("/edit"), body);
      let selected = state.selected;
      if (select !== undefined) selected = select;
      if (!state.changed) setStatus("nothing changed");
      else setStatus(`${body.op} done`);
      await show(state, { selected });
    });
  }

  function history(which) {
    if (!app.state) return;
    clearError();
    enqueue(async () => {
      const state = await api("POST", sessionPath(`/${which}`));
      await show(state);
      setStatus(which);
    });
  }

  function strokeClass() {
    if (app.tool === "eraser") return +$("eraser-class").value;
    return app.classId;
  }

  function strokeEdit(points) {
    const radius = app.radius;
    if (app.tool === "eraser") {
      const body = { op: "erase", points, radius };
      const eraser = +$("eraser-class").value;
      if (eraser !== app.config.eraser) body.class_id = eraser;
      return edit(body);
    }
    if (app.tool === "add") {
      return edit({ op: "add_object", points, class_id: app.classId, radius });
    }
    const body = { op: "paint", points, class_id: app.classId, radius };
    const region = app.selected !== null ? regionById(app.selected) : null;
    if (classInfo(app.classId).thing && region && region.thing && region.class_id === app.classId) {
      body.instance_id = region.id; // extend the selected object
    }
    return edit(body);
  }

  function toImage(event) {
    const rect = ui.overlay.getBoundingClientRect();
    const x = ((event.clientX - rect.left) * ui.overlay.width) / rect.width;
    const y = ((event.clientY - rect.top) * ui.overlay.height) / rect.height;
    return [x - 0.5, y - 0.5];
  }

  function onPointerDown(event) {
    if (!app.state || event.button !== 0) return;
    const point = toImage(event);
    if (app.tool === "select") {
      const x = Math.floor(point[0] + 0.5);
      const y = Math.floor(point[1] + 0.5);
      clearError();
      enqueue(async () => {
        const region = await api("GET", sessionPath(`/region?x=${x}&y=${y}`));
        app.selected = region.id;
        await refreshSelection();
        renderInspector();
        setStatus(`selected ${region.class_name} ${region.id}`);
      });
      return;
    }
    if (app.tool === "add" && !classInfo(app.classId).thing) {
      const things = app.config.classes.filter((c) => c.thing).map((c) => c.name);
      showError(
        things.length
          ? `Add object paints a new object of a thing class: pick one of ${things.join(", ")} in the palette.`
          : "This model's classes have no thing classes (start the editor with --thing_classes)."
      );
      return;
    }
    ui.overlay.setPointerCapture(event.pointerId);
    app.stroke = { points: [point.map((v) => Math.round(v * 10) / 10)] };
    drawOverlay();
  }

  function onPointerMove(event) {
    const point = toImage(event);
    app.hover = point;
    if (app.stroke) {
      const last = app.stroke.points[app.stroke.points.length - 1];
      const step = Math.max(1, app.radius / 4);
      if (Math.hypot(point[0] - last[0], point[1] - last[1]) >= step) {
        app.stroke.points.push(point.map((v) => Math.round(v * 10) / 10));
      }
    }
    drawOverlay();
  }

  function onPointerUp(event) {
    if (!app.stroke) return;
    const points = app.stroke.points;
    app.stroke = null;
    if (ui.overlay.hasPointerCapture(event.pointerId)) ui.overlay.releasePointerCapture(event.pointerId);
    strokeEdit(points).then(() => drawOverlay());
  }

  // ------------------------------------------------------------------ opening scenes
  function openScene(name) {
    clearError();
    return enqueue(async () => {
      const state = await api("POST", "/api/sessions", { name });
      await show(state);
      setStatus(`opened ${name}`);
    });
  }

  function uploadScene(labelFile, instanceFile, extra = {}) {
    const form = new FormData();
    form.append("label", labelFile);
    if (instanceFile) form.append("instance", instanceFile);
    form.append("name", extra.name || labelFile.name || "upload.png");
    if (extra.styles) form.append("styles", JSON.stringify(extra.styles));
    if (extra.seed !== undefined) form.append("seed", String(extra.seed));
    return api("POST", "/api/sessions/upload", form);
  }

  // A copy of the edited maps in this browser, so that a restarted server loses nothing.
  let backupTimer = null;
  function scheduleBackup(state) {
    clearTimeout(backupTimer);
    backupTimer = setTimeout(() => backup(state).catch(() => {}), 300);
  }

  async function blobToDataURL(blob) {
    return new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.readAsDataURL(blob);
    });
  }

  async function backup(state) {
    if (!app.state || app.state.revision !== state.revision) return;
    const [label, instance] = await Promise.all(
      ["/label.png", "/instance.png"].map((suffix) => fetch(sessionPath(suffix)).then((r) => r.blob()))
    );
    const record = {
      session: state.session,
      revision: state.revision,
      name: state.name,
      seed: state.seed,
      styles: state.styles,
      label: await blobToDataURL(label),
      instance: await blobToDataURL(instance),
    };
    const text = JSON.stringify(record);
    if (text.length < BACKUP_MAX_CHARS) localStorage.setItem(BACKUP_KEY, text);
    else localStorage.removeItem(BACKUP_KEY);
  }

  async function restoreBackup() {
    const text = localStorage.getItem(BACKUP_KEY);
    if (!text) return false;
    const record = JSON.parse(text);
    const [label, instance] = await Promise.all(
      [record.label, record.instance].map((url) => fetch(url).then((r) => r.blob()))
    );
    const state = await uploadScene(label, instance, {
      name: record.name,
      styles: record.styles,
      seed: record.seed,
    });
    await show(state);
    setStatus(`restored ${record.name} from this browser's backup`);
    return true;
  }

  // ------------------------------------------------------------------ controls
  function buildControls() {
    const classes = app.config.classes;
    const palette = $("palette");
    palette.replaceChildren();
    for (const c of classes) {
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("role", "radio");
      button.dataset.classId = String(c.id);
      button.setAttribute("aria-checked", "false");
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.style.background = colorOf(c.id);
      const name = document.createElement("span");
      name.textContent = `${c.id} ${c.name}`;
      button.append(chip, name);
      if (c.thing) {
        const mark = document.createElement("span");
        mark.className = "thing-mark";
        mark.textContent = "object";
        button.append(mark);
      }
      button.addEventListener("click", () => pickClass(c.id));
      palette.append(button);
    }
    const stuff = classes.filter((c) => !c.thing);
    const option = (c) => new Option(`${c.id} ${c.name}`, String(c.id));
    $("eraser-class").replaceChildren(...stuff.map(option));
    $("eraser-class").value = String(app.config.eraser);
    $("relabel-class").replaceChildren(...classes.map(option));
    $("fill-class").replaceChildren(new Option("surrounding class", ""), ...stuff.map(option));
    const first = stuff.find((c) => c.id !== app.config.eraser) || classes[0];
    pickClass(first.id);
    $("radius").value = String(app.config.default_radius);
    setRadius(app.config.default_radius);
    const b = app.config.backend;
    $("backend").textContent = `model: ${b.description}`;
  }

  function pickClass(id) {
    app.classId = id;
    for (const button of $("palette").children) {
      button.setAttribute("aria-checked", String(+button.dataset.classId === id));
    }
  }

  function setRadius(value) {
    app.radius = +value;
    $("radius-value").textContent = String(app.radius);
    drawOverlay();
  }

  function setTool(tool) {
    app.tool = tool;
    for (const input of document.querySelectorAll('input[name="tool"]')) input.checked = input.value === tool;
    drawOverlay();
  }

  function bindControls() {
    for (const input of document.querySelectorAll('input[name="tool"]')) {
      input.addEventListener("change", () => setTool(input.value));
    }
    $("radius").addEventListener("input", (e) => setRadius(e.target.value));
    $("undo").addEventListener("click", () => history("undo"));
    $("redo").addEventListener("click", () => history("redo"));
    $("reseed").addEventListener("click", () => app.state && edit({ op: "reseed" }));
    $("open-button").addEventListener("click", () => {
      const name = $("scene-select").value;
      if (name) openScene(name);
    });
    $("upload-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const label = $("upload-label").files[0];
      const instance = $("upload-instance").files[0];
      clearError();
      if (!label) {
        showError("Choose a label PNG (single-channel 8-bit class ids) to upload.");
        return;
      }
      enqueue(async () => {
        const state = await uploadScene(label, instance);
        await show(state);
        setStatus(`uploaded ${label.name}`);
      });
    });
    $("relabel-button").addEventListener("click", () => {
      if (app.selected === null) return;
      edit({ op: "relabel", region: app.selected, class_id: +$("relabel-class").value });
    });
    $("delete-button").addEventListener("click", deleteSelected);
    $("style-random").addEventListener("click", () => {
      if (app.selected !== null) edit({ op: "restyle", region: app.selected, style: "random" });
    });
    $("style-sampled").addEventListener("click", () => {
      if (app.selected !== null) edit({ op: "restyle", region: app.selected, style: null });
    });
    ui.overlay.addEventListener("pointerdown", onPointerDown);
    ui.overlay.addEventListener("pointermove", onPointerMove);
    ui.overlay.addEventListener("pointerup", onPointerUp);
    ui.overlay.addEventListener("pointerleave", () => {
      app.hover = null;
      drawOverlay();
    });
    document.addEventListener("keydown", onKey);
  }

  function deleteSelected() {
    if (app.selected === null) return;
    const body = { op: "delete", region: app.selected };
    const fill = $("fill-class").value;
    if (fill !== "") body.fill_class = +fill;
    edit(body, { select: null });
  }

  function onKey(event) {
    if (event.target.closest("input, select, textarea")) return;
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && key === "z") {
      event.preventDefault();
      history(event.shiftKey ? "redo" : "undo");
    } else if ((event.ctrlKey || event.metaKey) && key === "y") {
      event.preventDefault();
      history("redo");
    } else if (!event.ctrlKey && !event.metaKey && !event.altKey) {
      const tools = { s: "select", b: "brush", e: "eraser", a: "add" };
      if (tools[key]) setTool(tools[key]);
      else if (key === "delete" || key === "backspace") deleteSelected();
      else if (key === "[") setRadius(Math.max(1, app.radius - 1));
      else if (key === "]") setRadius(Math.min(64, app.radius + 1));
    }
  }

  // ------------------------------------------------------------------ start
  async function start() {
    setBusy(+1);
    try {
      app.config = await api("GET", "/api/config");
      buildControls();
      bindControls();
      const scenes = await api("GET", "/api/scenes");
      $("scene-select").replaceChildren(...scenes.names.map((n) => new Option(n, n)));
      $("open-group").hidden = scenes.names.length === 0;
      const saved = localStorage.getItem(SESSION_KEY);
      if (saved) {
        try {
          const state = await api("GET", `/api/sessions/${encodeURIComponent(saved)}`);
          await show(state);
          setStatus(`resumed ${state.name}`);
          return;
        } catch (error) {
          if (error.status !== 404) throw error;
          if (await restoreBackup().catch(() => false)) return;
        }
      }
      if (scenes.names.length) {
        const state = await api("POST", "/api/sessions", { name: scenes.names[0] });
        await show(state);
        setStatus(`opened ${scenes.names[0]}`);
      } else {
        setStatus("upload a label map (and its instance map) to start");
      }
    } catch (error) {
      showError(error);
    } finally {
      setBusy(-1);
    }
  }

  start();
})();
