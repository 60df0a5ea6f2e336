// YOLOv7 demo page: plain JavaScript, no dependencies, no build step.
// Talks only to the predictor's Open Inference Protocol (v2) routes, with URLs relative to the page.
// Three sources, one request path: an image file, the frames of a video file, the frames of the webcam.
// Video and webcam frames are captured here (canvas -> JPEG) and sent one at a time; each answer is drawn
// over the very frame that was sent, so the boxes on screen are exactly the server's boxes.
"use strict";

(function () {
  const config = JSON.parse(document.body.dataset.config || "{}");
  const modelName = config.modelName || "yolov7";
  const root = config.root || "";
  const modelUrl = `${root}v2/models/${encodeURIComponent(modelName)}`;
  const inferUrl = `${modelUrl}/infer`;
  // what the server decodes itself; other images the browser can read are re-encoded as PNG first
  const SERVER_TYPES = ["image/jpeg", "image/png", "image/bmp", "image/webp"];
  const VIDEO_EXTENSIONS = ["mp4", "m4v", "webm", "ogv", "ogg", "mov", "mkv", "avi"];
  const FRAME_QUALITY = 0.85;   // JPEG quality of captured video/webcam frames
  const RATE_WINDOW = 12;       // frames/s over the last N answers
  const SMALL_FRAME_PX = 480;   // images narrower than this are scaled up on screen

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), notice: $("notice"), file: $("file"), drop: $("dropzone"), endpoint: $("endpoint"),
    confidence: $("confidence"), confidenceValue: $("confidence-value"),
    iou: $("iou"), iouValue: $("iou-value"), error: $("error"), summary: $("summary"),
    canvas: $("canvas"), tbody: document.querySelector("#detections tbody"), count: $("count"),
    json: $("json"), gallery: $("gallery"), video: $("video"), busyText: $("busy-text"),
    rate: $("rate"), fps: $("fps"), latency: $("latency"), frames: $("frames"),
    webcamControls: $("webcam-controls"), webcamStart: $("webcam-start"), webcamStop: $("webcam-stop"),
    videoControls: $("video-controls"), videoToggle: $("video-toggle"), videoName: $("video-name"),
    downloadImage: $("download-image"), downloadJson: $("download-json"),
    filter: $("filter"), filterItems: $("filter-items"),
  };
  const ctx = el.canvas.getContext("2d");
  const grabber = document.createElement("canvas");  // frames of the video/webcam are captured here
  const grabCtx = grabber.getContext("2d", { willReadFrequently: false });

  let modelStatus = "";
  let current = null;      // {name, blob, bitmap, kind: "image"|"frame"}: what is on screen
  let result = null;       // {list, width, height, body, confidence, iou, elapsed}
  let highlighted = -1;
  let inFlight = null;     // AbortController of the running image request
  let sequence = 0;        // every request, image or frame
  const hidden = new Set();  // class ids the filter hides
  let stream = null;       // {token, kind, name, times: [], frames, mediaStream}
  let busyTimer = null;

  el.endpoint.textContent = `POST ${inferUrl}`;
  if (config.notice) {
    el.notice.textContent = config.notice;
    el.notice.hidden = false;
  }

  // ----- status line -------------------------------------------------------------------------------
  function setStatus(extra) {
    el.status.textContent = extra ? `${modelStatus} · ${extra}` : modelStatus;
  }

  function setState(state) {
    document.body.dataset.state = state;
    clearInterval(busyTimer);
    if (state === "busy") {
      const started = performance.now();
      el.busyText.textContent = "Detecting…";
      busyTimer = setInterval(() => {
        el.busyText.textContent = `Detecting… ${((performance.now() - started) / 1000).toFixed(1)} s`;
      }, 100);
    }
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

  function stem(name) {
    return String(name || "image").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") || "image";
  }

  function extension(name) {
    const match = /\.([^.]+)$/.exec(String(name || ""));
    return match ? match[1].toLowerCase() : "";
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
    const scores = output(body, "detection_scores").data;
    const classes = output(body, "detection_classes").data;
    const labels = output(body, "detection_labels").data;
    const size = output(body, "image_sizes").data;  // [h, w]
    const list = [];
    for (let i = 0; i < num; i += 1) {
      list.push({
        index: i,
        label: String(labels[i]),
        cls: classes[i] | 0,
        score: Number(scores[i]),
        box: boxes.data.slice(i * 4, i * 4 + 4).map(Number),
      });
    }
    return { list, height: size[0] | 0, width: size[1] | 0 };
  }

  function shown() {
    return result ? result.list.filter((det) => !hidden.has(det.cls)) : [];
  }

  // ----- drawing -----------------------------------------------------------------------------------
  function draw() {
    if (!current || !current.bitmap) return;
    const { bitmap } = current;
    const w = bitmap.width, h = bitmap.height;
    if (el.canvas.width !== w || el.canvas.height !== h) {
      el.canvas.width = w;
      el.canvas.height = h;
      // small frames (a 320×240 webcam or clip) are shown larger; the canvas keeps their own pixels
      el.canvas.style.width = w < SMALL_FRAME_PX ? `min(100%, ${SMALL_FRAME_PX}px)` : "";
    }
    ctx.drawImage(bitmap, 0, 0, w, h);
    const line = Math.max(2, Math.round(Math.min(w, h) / 300));
    const font = Math.max(12, Math.round(Math.min(w, h) / 40));
    ctx.font = `600 ${font}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    shown().forEach((det) => {
      const [x1, y1, x2, y2] = det.box;
      const strong = highlighted < 0 || highlighted === det.index;
      ctx.lineWidth = highlighted === det.index ? line * 2 : line;
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
    const list = shown();
    list.forEach((det) => {
      const row = document.createElement("tr");
      row.dataset.index = String(det.index);
      const cells = [det.index + 1, det.label, det.cls, det.score.toFixed(3), ...det.box.map((v) => v.toFixed(1))];
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
      row.addEventListener("mouseenter", () => { highlighted = det.index; draw(); });
      row.addEventListener("mouseleave", () => { highlighted = -1; draw(); });
      el.tbody.append(row);
    });
    const total = result ? result.list.length : 0;
    el.count.textContent = list.length === total ? String(total) : `${list.length} of ${total}`;
  }

  // one checkbox per class present in the answer; what is unticked stays hidden across answers
  function renderFilter() {
    const counts = new Map();
    (result ? result.list : []).forEach((det) => {
      const entry = counts.get(det.cls) || { label: det.label, n: 0 };
      entry.n += 1;
      counts.set(det.cls, entry);
    });
    const key = [...counts].map(([cls, e]) => `${cls}:${e.n}`).join(",");
    if (el.filterItems.dataset.key === key) return;  // unchanged: keep focus where it is
    el.filterItems.dataset.key = key;
    el.filterItems.replaceChildren();
    [...counts].sort((a, b) => a[1].label.localeCompare(b[1].label)).forEach(([cls, entry]) => {
      const label = document.createElement("label");
      label.className = "chip";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = !hidden.has(cls);
      box.value = String(cls);
      box.addEventListener("change", () => {
        if (box.checked) hidden.delete(cls); else hidden.add(cls);
        renderTable();
        draw();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour(cls, 1);
      label.append(box, swatch, `${entry.label} (${entry.n})`);
      el.filterItems.append(label);
    });
    el.filter.hidden = counts.size === 0;
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  function enableDownloads(on) {
    [el.downloadImage, el.downloadJson].forEach((a) => a.setAttribute("aria-disabled", on ? "false" : "true"));
  }

  // ----- the request (one path for images and frames) -----------------------------------------------
  class RequestError extends Error {}

  async function infer(blob, name, signal) {
    const confidence = Number(el.confidence.value);
    const iou = Number(el.iou.value);
    const mine = ++sequence;
    const payload = {
      id: `demo-${mine}`,
      inputs: [{ name: "images", shape: [1], datatype: "BYTES", data: [toBase64(await blob.arrayBuffer())] }],
      parameters: { confidence, iou },
    };
    const started = performance.now();
    let response, text;
    try {
      response = await fetch(inferUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(payload),
        signal,
      });
      text = await response.text();
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new RequestError(`Cannot reach the predictor: ${error.message}`);
    }
    const elapsed = performance.now() - started;
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON: shown as text */ }
    el.json.textContent = body ? pretty(body) : text;
    if (!response.ok) {
      const reason = (body && (body.error || body.detail)) || text.slice(0, 300) || response.statusText;
      throw new RequestError(`The server refused ${name} (HTTP ${response.status}): ${reason}`);
    }
    let parsed;
    try { parsed = parseDetections(body); } catch (error) { throw new RequestError(`Unexpected response: ${error.message}`); }
    return { ...parsed, body, elapsed, confidence, iou, seq: mine };
  }

  function show(answer) {
    result = answer;
    highlighted = -1;
    clearError();
    renderFilter();
    renderTable();
    draw();
    enableDownloads(true);
    document.body.dataset.seq = String(answer.seq);
  }

  function fail(message) {
    result = null;
    renderFilter();
    renderTable();
    showError(message);
    el.summary.textContent = "No result.";
    enableDownloads(false);
    document.body.dataset.seq = String(sequence);
    setState("error");
    setStatus("error");
  }

  async function detectImage() {
    if (!current || current.kind !== "image") return;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const target = current;
    setState("busy");
    setStatus(`detecting in ${target.name}…`);
    el.summary.textContent = `Detecting in ${target.name}…`;
    let answer;
    try {
      answer = await infer(target.blob, target.name, controller.signal);
    } catch (error) {
      if (error.name === "AbortError" || inFlight !== controller) return;  // replaced by a newer request
      inFlight = null;
      fail(error instanceof RequestError ? error.message : `Error: ${error.message}`);
      return;
    }
    if (inFlight !== controller || current !== target) return;
    inFlight = null;
    show(answer);
    const ms = answer.elapsed.toFixed(0);
    const n = answer.list.length;
    el.summary.textContent =
      `${n} detection${n === 1 ? "" : "s"} in ${target.name} (${answer.width}×${answer.height}) ` +
      `at confidence ${answer.confidence.toFixed(2)}, IoU ${answer.iou.toFixed(2)} · ${ms} ms` +
      (target.note ? ` · ${target.note}` : "");
    setState("done");
    setStatus(`${n} detections in ${ms} ms`);
  }

  // ----- sources -----------------------------------------------------------------------------------
  function classify(file) {
    const type = (file.type || "").toLowerCase();
    const ext = extension(file.name);
    if (type.startsWith("video/") || (!type && VIDEO_EXTENSIONS.includes(ext))) return "video";
    return "image";
  }

  function unsupported(file, detail) {
    const type = file.type ? ` (${file.type})` : "";
    return `${file.name}${type} ${detail}: choose a JPEG, PNG, BMP or WebP image, or a video this browser plays (MP4, WebM).`;
  }

  async function useImage(file, name) {
    stopStream();
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch (_) {
      bitmap = null;
    }
    const type = (file.type || "").toLowerCase();
    let blob = file;
    let note = "";
    if (!SERVER_TYPES.includes(type)) {
      if (!bitmap) {
        clearView();
        fail(unsupported(file, "is not an image or a video this page can read"));
        return;
      }
      // an image the browser reads but the server does not (GIF, AVIF, SVG, ...): send it as PNG
      grabber.width = bitmap.width;
      grabber.height = bitmap.height;
      grabCtx.drawImage(bitmap, 0, 0);
      blob = await new Promise((resolve) => grabber.toBlob(resolve, "image/png"));
      note = `sent as PNG (the server reads JPEG, PNG, BMP and WebP; this was ${type || extension(file.name) || "unknown"})`;
    }
    if (current && current.bitmap && current.bitmap.close) current.bitmap.close();
    current = { name: name || file.name, blob, bitmap, kind: "image", note };
    result = null;
    renderFilter();
    renderTable();
    clearError();
    if (!bitmap) clearView(); else draw();
    await detectImage();  // a JPEG/PNG/... the browser cannot read: the server's answer says why
  }

  function clearView() {
    el.canvas.width = 0;
    el.canvas.height = 0;
  }

  function useFile(file) {
    if (!file) return;
    clearError();
    if (file.size === 0) {
      fail(unsupported(file, "is empty"));
      return;
    }
    if (classify(file) === "video") {
      setMode("video");
      useVideo(file);
    } else {
      if (document.body.dataset.mode !== "image") setMode("image");
      useImage(file);
    }
  }

  // ----- video file and webcam: capture a frame, send it, draw the answer over it, repeat --------------
  function updateRate() {
    const times = stream.times;
    el.frames.textContent = String(stream.frames);
    if (times.length >= 2) {
      const fps = (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000);
      el.fps.textContent = fps.toFixed(1);
    }
    el.latency.textContent = stream.latency.toFixed(0);
    document.body.dataset.frames = String(stream.frames);
  }

  async function grabFrame() {
    const video = el.video;
    grabber.width = video.videoWidth;
    grabber.height = video.videoHeight;
    grabCtx.drawImage(video, 0, 0, grabber.width, grabber.height);
    const time = video.currentTime;
    const blob = await new Promise((resolve) => grabber.toBlob(resolve, "image/jpeg", FRAME_QUALITY));
    const bitmap = await createImageBitmap(grabber);
    return { blob, bitmap, time };
  }

  async function frameLoop(token) {
    const video = el.video;
    while (stream && stream.token === token) {
      if (video.ended) { finishStream("ended"); return; }
      if (video.paused || video.readyState < 2 || !video.videoWidth) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        continue;
      }
      const frame = await grabFrame();
      let answer;
      try {
        answer = await infer(frame.blob, `${stream.name} frame`, stream.controller.signal);
      } catch (error) {
        if (!stream || stream.token !== token) return;
        if (error.name === "AbortError") return;
        stopStream();
        fail(error instanceof RequestError ? error.message : `Error: ${error.message}`);
        return;
      }
      if (!stream || stream.token !== token) { frame.bitmap.close(); return; }
      if (current && current.bitmap && current.bitmap.close) current.bitmap.close();
      current = { name: stream.name, blob: frame.blob, bitmap: frame.bitmap, kind: "frame", time: frame.time };
      show(answer);
      stream.frames += 1;
      stream.latency = answer.elapsed;
      stream.times.push(performance.now());
      if (stream.times.length > RATE_WINDOW) stream.times.shift();
      updateRate();
      const n = answer.list.length;
      const where = stream.kind === "video" ? ` at ${frame.time.toFixed(2)} s` : "";
      el.summary.textContent = `${n} detection${n === 1 ? "" : "s"} in ${stream.name}${where} ` +
        `(${answer.width}×${answer.height}) at confidence ${answer.confidence.toFixed(2)}, IoU ${answer.iou.toFixed(2)}`;
      setStatus(`${stream.kind === "video" ? "video" : "webcam"}: ${el.fps.textContent} frames/s, ${stream.latency.toFixed(0)} ms latency`);
    }
  }

  function startStream(kind, name, mediaStream) {
    stopStream();
    if (inFlight) { inFlight.abort(); inFlight = null; }
    stream = { token: {}, kind, name, times: [], frames: 0, latency: 0, mediaStream,
               controller: new AbortController() };
    result = null;
    renderTable();
    el.rate.hidden = false;
    el.fps.textContent = "–";
    el.latency.textContent = "–";
    el.frames.textContent = "0";
    document.body.dataset.frames = "0";
    document.body.dataset.source = kind;
    setState("streaming");
    frameLoop(stream.token);
  }

  function finishStream(reason) {
    const was = stream;
    stopStream();
    if (!was) return;
    setState("done");
    setStatus(`${was.kind === "video" ? "video " + reason : "webcam stopped"} after ${was.frames} frames`);
  }

  function stopStream() {
    if (!stream) return;
    const was = stream;
    stream = null;
    was.controller.abort();
    if (was.mediaStream) was.mediaStream.getTracks().forEach((track) => track.stop());
    el.video.pause();
    el.webcamStart.disabled = false;
    el.webcamStop.disabled = true;
    el.videoToggle.textContent = "Play again";
    if (document.body.dataset.state === "streaming") setState("done");
  }

  function useVideo(file) {
    stopStream();
    if (file.type && !el.video.canPlayType(file.type)) {
      fail(unsupported(file, "is a video format this browser cannot play"));
      return;
    }
    const video = el.video;
    if (video.dataset.url) URL.revokeObjectURL(video.dataset.url);
    video.srcObject = null;
    const url = URL.createObjectURL(file);
    video.dataset.url = url;
    video.src = url;
    video.loop = false;
    el.videoName.textContent = file.name;
    el.videoControls.hidden = false;
    video.onerror = () => {
      stopStream();
      fail(unsupported(file, "could not be played by this browser"));
    };
    video.play().then(() => {
      el.videoToggle.textContent = "Pause";
      startStream("video", file.name, null);
    }).catch((error) => {
      if (error.name !== "AbortError") fail(unsupported(file, `could not be played (${error.message})`));
    });
  }

  async function startWebcam() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      fail("This page cannot use a camera here: browsers allow the webcam only on secure (HTTPS) pages and on " +
           "localhost (open the page as 127.0.0.1:PORT on the machine that runs the predictor).");
      return;
    }
    clearError();
    el.webcamStart.disabled = true;
    let media;
    try {
      media = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (error) {
      el.webcamStart.disabled = false;
      const why = {
        NotAllowedError: "the browser was not allowed to use the camera (check the permission in the address bar)",
        NotFoundError: "no camera was found",
        NotReadableError: "the camera is in use by another program",
      }[error.name] || error.message;
      fail(`Cannot start the webcam: ${why}.`);
      return;
    }
    const video = el.video;
    video.onerror = null;  // leaving a video file behind is not an error of the webcam
    if (video.dataset.url) { URL.revokeObjectURL(video.dataset.url); delete video.dataset.url; }
    video.removeAttribute("src");
    video.srcObject = media;
    await video.play();
    el.webcamStop.disabled = false;
    startStream("webcam", "webcam", media);
  }

  // ----- downloads ---------------------------------------------------------------------------------
  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  function resultJson() {
    const list = shown();
    return {
      source: current.name,
      time: current.kind === "frame" && typeof current.time === "number" ? current.time : undefined,
      model: document.body.dataset.model || modelName,
      width: result.width,
      height: result.height,
      confidence: result.confidence,
      iou: result.iou,
      hidden_classes: [...hidden],
      detections: list.map((det) => ({ label: det.label, class_id: det.cls, score: det.score, box: det.box })),
      response: result.body,
    };
  }

  el.downloadImage.addEventListener("click", (event) => {
    event.preventDefault();
    if (!result || !current || !current.bitmap) return;
    el.canvas.toBlob((blob) => saveBlob(blob, `${stem(current.name)}-detections.png`), "image/png");
  });
  el.downloadJson.addEventListener("click", (event) => {
    event.preventDefault();
    if (!result || !current) return;
    const blob = new Blob([JSON.stringify(resultJson(), null, 2)], { type: "application/json" });
    saveBlob(blob, `${stem(current.name)}-detections.json`);
  });
  [el.downloadImage, el.downloadJson].forEach((a) => {
    a.href = "#";
    a.addEventListener("keydown", (event) => { if (event.key === " ") { event.preventDefault(); a.click(); } });
  });

  // ----- modes and gallery -------------------------------------------------------------------------
  function setMode(mode) {
    if (document.body.dataset.mode !== mode) stopStream();
    document.body.dataset.mode = mode;
    document.querySelectorAll("button.mode").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.mode === mode)));
    el.drop.hidden = mode === "webcam";
    el.webcamControls.hidden = mode !== "webcam";
    el.videoControls.hidden = mode !== "video" || !el.video.dataset.url;
    el.gallery.hidden = mode !== "image";
    el.rate.hidden = mode === "image";
    const titles = {
      image: "Drop an image or a video here or <u>choose a file</u>",
      video: "Drop a video here or <u>choose a file</u>",
    };
    if (titles[mode]) document.getElementById("drop-title").innerHTML = titles[mode];
  }
  document.querySelectorAll("button.mode").forEach((button) => {
    button.addEventListener("click", () => setMode(button.dataset.mode));
  });

  (config.samples || []).forEach((sample) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.sample = sample.name;
    button.title = `${sample.name} · ${sample.credit}`;
    const img = document.createElement("img");
    img.src = `${root}demo/samples/${encodeURIComponent(sample.name)}`;
    img.alt = sample.alt;
    img.loading = "lazy";
    const caption = document.createElement("span");
    caption.textContent = sample.alt;
    button.append(img, caption);
    button.addEventListener("click", async () => {
      setMode("image");
      const response = await fetch(img.src);
      if (!response.ok) { fail(`Cannot load the example ${sample.name} (HTTP ${response.status})`); return; }
      const blob = await response.blob();
      useFile(new File([blob], sample.name, { type: blob.type || "image/jpeg" }));
    });
    el.gallery.append(button);
  });

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

  el.webcamStart.addEventListener("click", startWebcam);
  el.webcamStop.addEventListener("click", () => finishStream("stopped"));
  el.videoToggle.addEventListener("click", () => {
    const video = el.video;
    if (stream && stream.kind === "video") {
      if (video.paused) { video.play(); el.videoToggle.textContent = "Pause"; }
      else { video.pause(); el.videoToggle.textContent = "Resume"; }
    } else if (video.dataset.url) {
      video.currentTime = 0;
      video.play().then(() => { el.videoToggle.textContent = "Pause"; startStream("video", el.videoName.textContent, null); });
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && stream) finishStream("stopped");
  });

  let timer = null;
  let slidersTouched = false;
  function setSlider(input, label, value) {
    input.value = String(value);
    label.textContent = Number(input.value).toFixed(2);
  }
  function onSlider(input, label) {
    slidersTouched = true;
    label.textContent = Number(input.value).toFixed(2);
    if (stream) return;  // the next frame uses the new value
    clearTimeout(timer);
    timer = setTimeout(detectImage, 150);
  }
  el.confidence.addEventListener("input", () => onSlider(el.confidence, el.confidenceValue));
  el.iou.addEventListener("input", () => onSlider(el.iou, el.iouValue));
  el.confidenceValue.textContent = Number(el.confidence.value).toFixed(2);
  el.iouValue.textContent = Number(el.iou.value).toFixed(2);

  // for tests and the curious: the frame on screen and the answer drawn over it
  window.yoloDemo = {
    last: async () => (current && result ? {
      name: current.name, kind: current.kind,
      jpeg: current.kind === "frame" ? toBase64(await current.blob.arrayBuffer()) : null,
      confidence: result.confidence, iou: result.iou, seq: result.seq,
      detections: result.list.map((det) => ({ label: det.label, cls: det.cls, score: det.score, box: det.box })),
    } : null),
  };

  setMode("image");
  loadModelInfo();
})();
