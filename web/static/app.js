// Progressive enhancements: confirmations, the waveform cursor and seeking, live status, export progress,
// listening to a call in progress.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const button = event.submitter;
  const question = (button && button.dataset.confirmButton) || form.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

function setUpPlayer() {
  const player = document.getElementById("player");
  const wave = document.getElementById("waveform");
  const cursor = document.getElementById("cursor");
  if (!player || !wave) return;
  const length = () => (isFinite(player.duration) && player.duration > 0 ? player.duration : Number(wave.dataset.duration));
  player.addEventListener("timeupdate", () => {
    cursor.style.left = `${(100 * player.currentTime) / (length() || 1)}%`;
  });
  wave.addEventListener("click", (event) => {
    const box = wave.getBoundingClientRect();
    player.currentTime = ((event.clientX - box.left) / box.width) * length();
    player.play();
  });
}

function describeLine(card, line, labels) {
  const state = card.querySelector("[data-field=state]");
  let text = labels[line.state] || line.state;
  if (line.state === "in_call" && line.call_started_at) {
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(line.call_started_at)) / 1000));
    text += ` ${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  }
  state.textContent = text;
  state.className = `state state-${line.state}`;
  const more = line.calls > 1 ? ` (×${line.calls})` : "";     // a SIP trunk carries several calls
  card.querySelector("[data-field=call]").textContent = (line.number || "") + more;
  const level = line.level_dbfs === null || line.level_dbfs === undefined ? -90 : line.level_dbfs;
  card.querySelector("[data-field=level]").value = level;
  card.querySelector("[data-field=level-text]").textContent = line.level_dbfs === null ? "—" : `${line.level_dbfs} dBFS`;
  describeControls(card, line);
}

function describeControls(card, line) {
  // Pause / Resume and Listen for the call in progress; the URLs carry call 0 in the page.
  const live = card.querySelector("[data-field=live]");
  if (!live) return;
  const inCall = (line.state === "in_call" || line.state === "paused") && line.call_id;
  live.hidden = !inCall;
  if (!inCall) return;
  const forCall = (url) => url.replace(/\/0(\/|$)/, `/${line.call_id}$1`);
  const button = live.querySelector("[data-field=pause]");
  const paused = line.state === "paused";
  button.form.action = forCall(paused ? live.dataset.resume : live.dataset.pause);
  button.textContent = paused ? button.dataset.labelResume : button.dataset.labelPause;
  const listen = live.querySelector("[data-field=listen]");
  if (listen) listen.href = `${forCall(live.dataset.call)}#live`;
}

function setUpLive() {
  // Hears a call in progress: the WAV stream read as it comes and played through Web Audio.
  const button = document.getElementById("listen-live");
  if (!button) return;
  const state = document.getElementById("live-state");
  const label = button.textContent;
  let stop = null;
  button.addEventListener("click", async () => {
    if (stop) { stop(); return; }
    const context = new AudioContext();
    const abort = new AbortController();
    stop = () => { abort.abort(); context.close(); stop = null; button.textContent = label; };
    button.textContent = button.dataset.stop;
    try {
      const response = await fetch(button.dataset.src, { credentials: "same-origin", signal: abort.signal });
      if (!response.ok) throw new Error(await response.text());
      await play(response.body.getReader(), context);
      state.textContent = button.dataset.ended;
    } catch (error) {
      if (error.name !== "AbortError") state.textContent = error.message;
    }
    if (stop) stop();
  });
}

async function play(reader, context) {
  // A 44-byte WAV header (rate, channels), then 16-bit PCM, scheduled back to back a little ahead.
  let pending = new Uint8Array(0);
  let rate = 0, channels = 1, next = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const joined = new Uint8Array(pending.length + value.length);
    joined.set(pending);
    joined.set(value, pending.length);
    let data = joined;
    if (!rate) {
      if (data.length < 44) { pending = data; continue; }
      const head = new DataView(data.buffer, data.byteOffset, 44);
      channels = head.getUint16(22, true);
      rate = head.getUint32(24, true);
      data = data.subarray(44);
    }
    const frameBytes = 2 * channels;
    const usable = data.length - (data.length % frameBytes);
    pending = data.slice(usable);
    const frames = usable / frameBytes;
    if (!frames) continue;
    const samples = new DataView(data.buffer, data.byteOffset, usable);
    const buffer = context.createBuffer(channels, frames, rate);
    for (let channel = 0; channel < channels; channel++) {
      const out = new Float32Array(frames);
      for (let i = 0; i < frames; i++) out[i] = samples.getInt16((i * channels + channel) * 2, true) / 32768;
      buffer.copyToChannel(out, channel);
    }
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    next = Math.max(next, context.currentTime + 0.05);
    source.start(next);
    next += buffer.duration;
  }
}

function setUpStatus() {
  const root = document.getElementById("status");
  if (!root || !window.EventSource) return;
  const labels = JSON.parse(root.dataset.labels);
  const show = (status) => {
    const recorder = document.getElementById("recorder");
    recorder.textContent = status.recorder_running ? labels.running : labels.stopped;
    recorder.className = status.recorder_running ? "flash" : "flash error";
    for (const line of status.lines) {
      const card = root.querySelector(`[data-line="${CSS.escape(line.name)}"]`);
      if (card) describeLine(card, line, labels);
    }
    if (status.disk.hours_left !== null) document.getElementById("hours-left").textContent = `${status.disk.hours_left} h`;
    const synced = status.clock_synced;
    document.getElementById("clock").textContent = synced === null ? "—" : synced ? labels.yes : labels.no;
  };
  const source = new EventSource(root.dataset.events);
  source.onmessage = (event) => show(JSON.parse(event.data));
  source.onerror = () => {
    // The server streams to a few pages at once only: the others poll.
    if (source.readyState !== EventSource.CLOSED) return;
    setInterval(async () => {
      const response = await fetch(root.dataset.poll, { credentials: "same-origin" });
      if (response.ok) show(await response.json());
    }, 2000);
  };
}

// A size as `data_size` in web/i18n.py writes it.
function dataSize(size) {
  const lang = document.documentElement.lang;
  for (const [unit, scale] of [["GB", 1e9], ["MB", 1e6]]) {
    if (size >= scale) return `${(size / scale).toLocaleString(lang, { minimumFractionDigits: 1, maximumFractionDigits: 1 })} ${unit}`;
  }
  return `${Math.round(size / 1e3).toLocaleString(lang)} kB`;
}

function setUpExport() {
  const root = document.getElementById("export");
  if (!root || root.dataset.state !== "running") return;
  const timer = setInterval(async () => {
    const response = await fetch(root.dataset.status, { credentials: "same-origin" });
    if (!response.ok) return;
    const job = await response.json();
    const bar = document.getElementById("export-progress");
    bar.max = job.total || 1;
    bar.value = job.done;
    document.getElementById("export-text").textContent = `${job.done} / ${job.total}`;
    const bytes = document.getElementById("export-bytes");
    bytes.textContent = bytes.dataset.template.replace("{written}", dataSize(job.written)).replace("{size}", dataSize(job.size));
    if (job.state === "ready") document.getElementById("export-download").hidden = false;
    if (job.state === "failed") {
      const error = document.getElementById("export-error");
      error.textContent = job.error;
      error.hidden = false;
    }
    if (job.state !== "running") clearInterval(timer);
  }, 500);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpPlayer();
  setUpStatus();
  setUpExport();
  setUpLive();
});
