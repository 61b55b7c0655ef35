// Progressive enhancements: confirmations, the waveform cursor and seeking, live status, export progress.
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
});
