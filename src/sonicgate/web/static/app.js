// The talk page: speaks the second seed's protocol ("type" messages) to
// /api/nova-sonic/stream, with the microphone in and the replies played out.
import { Microphone, Player } from "./audio.js";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "sonicgate.sessionId";
const FRAME_MS = 10; // the worklet's level frames
const VOICE_DB = -45; // a frame louder than this counts as speech
const METER_FLOOR_DB = -60; // the level meter's empty end
const HANGOVER_MS = 300; // "you are speaking" outlasts short pauses between words
const RETRY_SECONDS = [0.5, 1, 2, 4, 8];
// With access control on, open the page as /?token=…: the token goes with every request.
const TOKEN = new URLSearchParams(location.search).get("token");
const AUTH = TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : "";

// Everything the page has seen: shown to people, and read by the browser tests.
const state = {
  connection: "connecting",
  sessionId: sessionStorage.getItem(SESSION_KEY),
  engine: null,
  chunksSent: 0,
  captureRate: null, // the capture context's rate: 16000 unless the browser refused it
  chunkSamples: null,
  outputRate: 24000, // the replies' rate, as `initialized` announces it
  speakers: [], // who was speaking, each time it changed: "you", "assistant" or "nobody"
  audioChunksReceived: 0,
  interruptions: 0,
  partials: [],
  transcripts: [],
  replies: [],
  latencies: [],
  errors: [],
};
window.sonicgate = { state };

let socket = null;
let ready = false;
let ended = false; // the user ended the conversation: do not reconnect
let paused = false; // idle, or continued in another tab: reconnect when the user says
let retries = 0;
let lastVoiceAt = null; // performance.now() when the user's speech last ended
let turn = null; // {from, reply, heard}: the latest user turn and the reply to it
const player = new Player(showSpeaker);
const microphone = new Microphone(onChunk);
window.sonicgate.player = player;

// ---- connection ------------------------------------------------------------

function connect() {
  ended = false;
  setConnection("connecting", "connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/api/nova-sonic/stream${AUTH}`);
  socket.onopen = () => {
    retries = 0;
    send({
      type: "initialize",
      ...(state.sessionId ? { sessionId: state.sessionId } : {}),
      ...($("engine").value ? { engine: $("engine").value } : {}),
      textOnly: $("text-only").checked,
    });
  };
  socket.onmessage = (event) => receive(JSON.parse(event.data));
  socket.onclose = () => {
    setReady(false);
    if (ended || paused) return;
    const wait = RETRY_SECONDS[Math.min(retries++, RETRY_SECONDS.length - 1)];
    setConnection("down", `server unreachable, retrying in ${wait} s`);
    setTimeout(connect, wait * 1000);
  };
}

function reconnect() {
  // Same sessionId, new settings: the server resumes the conversation with its history.
  if (socket) {
    socket.onclose = null;
    socket.close();
  }
  setReady(false);
  connect();
}

function send(message) {
  if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function receive(message) {
  switch (message.type) {
    case "initialized":
      return onInitialized(message);
    case "transcription":
      return onTranscription(message);
    case "text_response":
      return onText(message);
    case "audio_response":
      return onAudio(message);
    case "interrupted":
      return onInterrupted();
    case "metrics":
      return onMetrics(message.stages);
    case "error":
      state.errors.push(message);
      if (message.code === "idle_timeout") return pause("idle");
      // Another tab (a duplicate shares this one's sessionId) has the conversation:
      // taking it back at once would make the two tabs take it from each other.
      if (message.code === "session_moved") return pause("continued in another tab");
      return notify(`${message.error} (${message.code})`);
    case "conversation_ended":
      return onEnded(message);
  }
}

function onInitialized(message) {
  state.sessionId = message.sessionId;
  state.engine = message.engine;
  state.outputRate = message.outputAudio?.sampleRate ?? state.outputRate;
  sessionStorage.setItem(SESSION_KEY, message.sessionId);
  setConnection("ready", `ready · ${message.engine}`);
  setReady(true);
  notify(null);
  if (message.resumed) note(`Resumed conversation (${message.messageCount} messages so far).`);
}

function pause(reason) {
  paused = true;
  if (socket) {
    socket.onclose = null;
    socket.close();
  }
  setReady(false);
  setConnection("idle", `${reason}: press Continue to go on`);
  $("end").textContent = "Continue";
  $("end").disabled = false;
}

function onEnded(message) {
  ended = true;
  if (microphone.live) toggleMicrophone(); // nothing listens: the device is released
  sessionStorage.removeItem(SESSION_KEY);
  state.sessionId = null;
  setReady(false);
  setConnection("idle", `ended · ${message.messageCount} messages`);
  note("Conversation ended.");
  socket.close();
  $("end").textContent = "New conversation";
  $("end").disabled = false;
}

// ---- conversation ----------------------------------------------------------

function onTranscription(message) {
  if (!message.isFinal) {
    state.partials.push(message.text);
    $("partial").textContent = message.text;
    return;
  }
  $("partial").textContent = "";
  state.transcripts.push(message.text);
  if (!message.text.trim()) return; // a noise the recognizer heard no words in
  const turn = bubble("user", message.text);
  meta(turn, `heard with confidence ${Math.round(message.confidence * 100)}%`);
  startReply(lastVoiceAt ?? performance.now());
}

function startReply(from) {
  turn = { from, reply: null, heard: false, muted: false };
}

function replyBubble() {
  turn ??= { from: null, reply: null, heard: true, muted: false };
  turn.reply ??= bubble("assistant", "");
  return turn.reply;
}

function onText(message) {
  const text = replyBubble().querySelector(".text");
  if (message.isFinal) {
    text.textContent = message.text;
    state.replies.push(message.text);
  } else {
    text.textContent += message.text;
  }
  scrollDown();
}

function onAudio(message) {
  state.audioChunksReceived += 1;
  if (turn?.muted) return; // Stop audio: the rest of this reply stays silent
  const bytes = Uint8Array.from(atob(message.audio), (c) => c.charCodeAt(0));
  player.play(bytes.buffer, message.sampleRate);
  const element = replyBubble();
  if (!turn.heard) {
    turn.heard = true;
    const seconds = (performance.now() - turn.from) / 1000;
    state.latencies.push(seconds);
    meta(element, `first audio ${seconds.toFixed(2)} s after you stopped`);
  }
  $("stop").disabled = false;
}

function onInterrupted() {
  state.interruptions += 1;
  player.stop();
  turn?.reply?.classList.add("interrupted");
}

function onMetrics(stages) {
  if (stages.first_audio === undefined) return;
  const parts = Object.entries(stages).map(([stage, s]) => `${stage} ${s.toFixed(2)} s`);
  if (turn?.reply) turn.reply.title = `server: ${parts.join(", ")}`;
}

// ---- microphone ------------------------------------------------------------

async function toggleMicrophone() {
  $("talk").disabled = true; // until this toggle is done
  player.prepare(state.outputRate); // a click: the moment browsers allow sound to start
  try {
    if (microphone.live) await microphone.stop();
    else await microphone.start();
  } catch (error) {
    state.errors.push({ code: "microphone", error: error.message });
    notify(error.message);
  }
  state.captureRate = microphone.rate;
  $("talk").disabled = !ready;
  $("talk").textContent = microphone.live ? "Mute microphone" : "Start talking";
  $("talk").setAttribute("aria-pressed", String(microphone.live));
  if (!microphone.live) $("level").value = 0;
  showSpeaker();
}

function onChunk(samples, levels) {
  // Where in this chunk the speech ended, to time the reply from there.
  let loudest = -Infinity;
  let voicedUntil = -1;
  levels.forEach((level, frame) => {
    const db = 20 * Math.log10(level);
    loudest = Math.max(loudest, db);
    if (db > VOICE_DB) voicedUntil = frame + 1;
  });
  if (voicedUntil >= 0) lastVoiceAt = performance.now() - (levels.length - voicedUntil) * FRAME_MS;
  $("level").value = Math.max(0, 1 - loudest / METER_FLOOR_DB);
  showSpeaker();
  if (!ready) return; // between connections: speech is dropped, not queued
  send({ type: "audio_chunk", audio: base64(samples), isComplete: false });
  state.chunksSent += 1;
  state.chunkSamples = samples.length;
}

/** Who is speaking now, shown beside the microphone: you, the assistant, or nobody. */
function showSpeaker() {
  const voiced =
    microphone.live && lastVoiceAt !== null && performance.now() - lastVoiceAt < HANGOVER_MS;
  // You first: speaking over a reply interrupts it.
  const who = voiced ? "you" : player.playing ? "assistant" : "nobody";
  if (who !== state.speakers.at(-1)) state.speakers.push(who);
  const idle = microphone.live ? "Listening" : "";
  const labels = { you: "You are speaking", assistant: "Assistant speaking", nobody: idle };
  if ($("speaker").textContent === labels[who]) return; // a status rewritten is read out again
  $("speaker").textContent = labels[who];
  $("speaker").className = `pill ${who}`;
}

function base64(samples) {
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

// ---- page ------------------------------------------------------------------

function bubble(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  $("history").append(item);
  scrollDown();
  return item;
}

function meta(item, text) {
  const line = document.createElement("span");
  line.className = "meta";
  line.textContent = text;
  item.append(line);
}

function note(text) {
  bubble("note", text);
}

function notify(text) {
  $("notice").hidden = text === null;
  $("notice").textContent = text ?? "";
}

function scrollDown() {
  document.querySelector("main").scrollTop = 1e9;
}

function setConnection(kind, label) {
  state.connection = kind;
  $("connection").className = `pill ${kind}`;
  $("connection").textContent = label;
}

function setReady(value) {
  ready = value;
  for (const id of ["talk", "end", "text", "send"]) $(id).disabled = !value;
  $("talk").disabled = !value && !microphone.live; // a live microphone can always be muted
  if (value) $("end").textContent = "End conversation";
}

async function loadEngines() {
  try {
    const response = await fetch(`/api/nova-sonic/status${AUTH}`);
    if (response.status === 401) {
      notify("This server needs an access token: open this page as /?token=YOUR_TOKEN.");
      return;
    }
    const status = await response.json();
    for (const [name, caps] of Object.entries(status.engines)) {
      const option = new Option(`${name} (${caps.languages.join(", ")})`, name);
      option.selected = name === status.defaultEngine;
      $("engine").append(option);
    }
  } catch {
    notify("Could not read the server's status; using its default engine.");
  }
}

$("talk").onclick = toggleMicrophone;
$("stop").onclick = () => {
  player.stop();
  if (turn) turn.muted = true;
  $("stop").disabled = true;
};
$("end").onclick = () => {
  if (ended) {
    $("history").replaceChildren();
    connect();
  } else if (paused) {
    paused = false;
    connect();
  } else {
    send({ type: "end_conversation" });
  }
};
$("compose").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !ready) return;
  player.prepare(state.outputRate); // a click: the moment browsers allow sound to start
  send({ type: "text_message", text });
  bubble("user", text);
  startReply(performance.now());
  $("text").value = "";
};
$("engine").onchange = reconnect;
$("text-only").onchange = reconnect;

await loadEngines();
connect();
