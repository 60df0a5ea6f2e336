// YOLOv7 demo page: plain JavaScript, no dependencies, no build step.
// Talks only to the predictor's Open Inference Protocol (v2) routes, with URLs relative to the page.
"use strict";

(function () {
  const config = JSON.parse(document.body.dataset.config || "{}");
  const modelName = config.modelName || "yolov7";
  const root = config.root || "";
  const modelUrl = `${root}v2/models/${encodeURIComponent(modelName)}`;
  const inferUrl = `${modelUrl}/infer`;

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), file: $("file"), drop: $("dropzone"), endpoint: $("endpoint"),
    confidence: $("confidence"), confidenceValue: $("confidence-value"),
    iou: $("iou"), iouValue: $("iou-value"), error: $("error"), summary: $("summary"),
    canvas: $("canvas"), tbody: document.querySelector("#detections tbody"), count: $("count"),
    json: $("json"),
  };
  const ctx = el.canvas.getContext("2d");

  let modelStatus = "";
  let current = null;      // {file, bitmap}: the image on screen
  let detections = [];     // [{label, cls, score, box:[x1,y1,x2,y2]}]
  let highlighted = -1;
  let inFlight = null;     // AbortController of the running request
  let sequence = 0;

  el.endpoint.textContent = `POST ${inferUrl}`;

  // ----- status line -------------------------------------------------------------------------------
  function setStatus(extra) {
    el.status.textContent = extra ? `${modelStatus} · ${extra}` : modelStatus;
  }

  async function loadModelInfo() {
    try {
      const response = await fetch(modelUrl, { headers: { Accept: "application/json" } });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        modelStatus = `Model ${modelName}: ${body.error || response.status + " " + response.statusText}`;
        el.status.classList.add("bad");
      } else {
        const info = body.parameters || {};
        const parts = [`Model ${body.name || modelName}`];
        const variant = info.variant || body.platform;
        if (variant) parts.push(`variant ${variant}`);
        if (info.device) parts.push([info.device, info.precision].filter(Boolean).join(" "));
        if (info.input_size) parts.push(`${info.input_size} px input`);
        if (Array.isArray(body.versions) && body.versions.length) parts.push(`version ${body.versions.join(", ")}`);
        modelStatus = parts.join(" · ");
        el.status.classList.remove("bad");
        document.body.dataset.model = body.name || modelName;
        if (variant) document.body.dataset.variant = variant;
        // start the sliders at the server's defaults, unless the user moved them already
        if (!slidersTouched) {
          if (typeof info.confidence === "number") setSlider(el.confidence, el.confidenceValue, info.confidence);
          if (typeof info.iou === "number") setSlider(el.iou, el.iouValue, info.iou);
        }
      }
    } catch (error) {
      modelStatus = `Cannot reach the predictor (${error.message})`;
      el.status.classList.add("bad");
    }
    setStatus(document.body.dataset.state === "idle" ? "ready" : "");
  }

  // ----- helpers -----------------------------------------------------------------------------------
  function toBase64(buffer) {
    const bytes = new Uint8Array(buffer);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  function colour(cls, alpha) {
    const hue = (cls * 137.508) % 360;  // golden angle: neighbouring ids get distant colours
    return `hsla(${hue.toFixed(1)}, 85%, 48%, ${alpha})`;
  }

  // indented JSON, with arrays of plain values kept on one (wrapping) line
  function pretty(value) {
    return JSON.stringify(value, null, 2).replace(/\[\s+([^\[\]{}]*?)\s+\]/g,
      (_, inner) => `[${inner.split(/,\s+/).join(", ")}]`);
  }

  function output(body, name) {
    const item = (body.outputs || []).find((o) => o.name === name);
    if (!item) throw new Error(`the response has no output named ${name}`);
    return item;
  }

  // v2 outputs (first image) -> list of detections
  function parseDetections(body) {
    const num = output(body, "num_detections").data[0] | 0;
    const boxes = output(body, "detection_boxes");
    const k = boxes.shape[1] | 0;
    const scores = output(body, "detection_scores").data;
    const classes = output(body, "detection_classes").data;
    const labels = output(body, "detection_labels").data;
    const size = output(body, "image_sizes").data;  // [h, w]
    const list = [];
    for (let i = 0; i < num; i += 1) {
      list.push({
        label: String(labels[i]),
        cls: classes[i] | 0,
        score: Number(scores[i]),
        box: boxes.data.slice(i * 4, i * 4 + 4).map(Number),
      });
    }
    return { list, height: size[0] | 0, width: size[1] | 0, k };
  }

  // ----- drawing -----------------------------------------------------------------------------------
  function draw() {
    if (!current || !current.bitmap) return;
    const { bitmap } = current;
    const w = bitmap.width, h = bitmap.height;
    if (el.canvas.width !== w || el.canvas.height !== h) {
      el.canvas.width = w;
      el.canvas.height = h;
    }
    ctx.drawImage(bitmap, 0, 0, w, h);
    const line = Math.max(2, Math.round(Math.min(w, h) / 300));
    const font = Math.max(12, Math.round(Math.min(w, h) / 40));
    ctx.font = `600 ${font}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    detections.forEach((det, index) => {
      const [x1, y1, x2, y2] = det.box;
      const strong = highlighted < 0 || highlighted === index;
      ctx.lineWidth = highlighted === index ? line * 2 : line;
      ctx.strokeStyle = colour(det.cls, strong ? 1 : 0.35);
      ctx.strokeRect(x1, y1, Math.max(1, x2 - x1), Math.max(1, y2 - y1));
      const text = `${det.label} ${det.score.toFixed(2)}`;
      const tw = ctx.measureText(text).width + font * 0.6;
      const th = font * 1.3;
      const ty = y1 - th >= 0 ? y1 - th : y1;        // above the box, or inside it at the top edge
      const tx = Math.max(0, Math.min(x1, w - tw));    // keep the label on the image
      ctx.fillStyle = colour(det.cls, strong ? 0.9 : 0.35);
      ctx.fillRect(tx, ty, tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, tx + font * 0.3, ty + font * 0.15);
    });
  }

  function renderTable() {
    el.tbody.replaceChildren();
    detections.forEach((det, index) => {
      const row = document.createElement("tr");
      row.dataset.index = String(index);
      const cells = [index + 1, det.label, det.cls, det.score.toFixed(3), ...det.box.map((v) => v.toFixed(1))];
      cells.forEach((value, column) => {
        const cell = document.createElement("td");
        if (column === 1) {
          const swatch = document.createElement("span");
          swatch.className = "swatch";
          swatch.style.background = colour(det.cls, 1);
          cell.append(swatch);
        }
        cell.append(String(value));
        row.append(cell);
      });
      row.addEventListener("mouseenter", () => { highlighted = index; draw(); });
      row.addEventListener("mouseleave", () => { highlighted = -1; draw(); });
      el.tbody.append(row);
    });
    el.count.textContent = String(detections.length);
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  // ----- the request -------------------------------------------------------------------------------
  async function detect() {
    if (!current) return;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const mine = ++sequence;
    const confidence = Number(el.confidence.value);
    const iou = Number(el.iou.value);
    document.body.dataset.state = "busy";
    setStatus(`detecting in ${current.file.name}…`);
    const payload = {
      id: `demo-${mine}`,
      inputs: [{ name: "images", shape: [1], datatype: "BYTES", data: [toBase64(await current.file.arrayBuffer())] }],
      parameters: { confidence, iou },
    };
    const started = performance.now();
    let response, text;
    try {
      response = await fetch(inferUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(payload),
        signal: controller.signal,
      });
      text = await response.text();
    } catch (error) {
      if (error.name === "AbortError") return;
      finish(mine, null, `Cannot reach the predictor: ${error.message}`);
      return;
    }
    const elapsed = performance.now() - started;
    if (mine !== sequence) return;  // a newer request replaced this one
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* shown as text below */ }
    el.json.textContent = body ? pretty(body) : text;
    if (!response.ok) {
      const reason = (body && (body.error || body.detail)) || text || response.statusText;
      finish(mine, null, `The server refused ${current.file.name} (HTTP ${response.status}): ${reason}`);
      return;
    }
    try {
      const result = parseDetections(body);
      finish(mine, { result, elapsed, confidence, iou }, null);
    } catch (error) {
      finish(mine, null, `Unexpected response: ${error.message}`);
    }
  }

  function finish(mine, ok, error) {
    if (mine !== sequence) return;
    inFlight = null;
    document.body.dataset.seq = String(mine);
    if (error) {
      detections = [];
      renderTable();
      showError(error);
      el.summary.textContent = "No result.";
      document.body.dataset.state = "error";
      setStatus("error");
      return;
    }
    clearError();
    detections = ok.result.list;
    highlighted = -1;
    renderTable();
    draw();
    const { width, height } = ok.result;
    const ms = ok.elapsed.toFixed(0);
    el.summary.textContent =
      `${detections.length} detection${detections.length === 1 ? "" : "s"} in ${current.file.name} ` +
      `(${width}×${height}) at confidence ${ok.confidence.toFixed(2)}, IoU ${ok.iou.toFixed(2)} · ${ms} ms`;
    document.body.dataset.state = "done";
    setStatus(`${detections.length} detections in ${ms} ms`);
  }

  async function useFile(file) {
    if (!file) return;
    clearError();
    detections = [];
    renderTable();
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch (_) {
      bitmap = null;  // not an image the browser can read: the server's answer says why
    }
    if (current && current.bitmap && current.bitmap.close) current.bitmap.close();
    current = { file, bitmap };
    if (!bitmap) {
      el.canvas.width = 0;
      el.canvas.height = 0;
    } else {
      draw();
    }
    await detect();
  }

  // ----- wiring ------------------------------------------------------------------------------------
  el.file.addEventListener("change", () => {
    const file = el.file.files && el.file.files[0];
    useFile(file);
    el.file.value = "";  // choosing the same file again fires "change" again
  });
  ["dragenter", "dragover"].forEach((type) => el.drop.addEventListener(type, (event) => {
    event.preventDefault();
    el.drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => el.drop.addEventListener(type, (event) => {
    event.preventDefault();
    el.drop.classList.remove("over");
  }));
  el.drop.addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    useFile(file);
  });
  // dropping outside the zone must not navigate away from the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  let timer = null;
  let slidersTouched = false;
  function setSlider(input, label, value) {
    input.value = String(value);
    label.textContent = Number(input.value).toFixed(2);
  }
  function onSlider(input, label) {
    slidersTouched = true;
    label.textContent = Number(input.value).toFixed(2);
    clearTimeout(timer);
    timer = setTimeout(detect, 150);
  }
  el.confidence.addEventListener("input", () => onSlider(el.confidence, el.confidenceValue));
  el.iou.addEventListener("input", () => onSlider(el.iou, el.iouValue));
  el.confidenceValue.textContent = Number(el.confidence.value).toFixed(2);
  el.iouValue.textContent = Number(el.iou.value).toFixed(2);

  loadModelInfo();
})();
