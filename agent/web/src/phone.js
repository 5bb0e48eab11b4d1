// The agent's web phone: JsSIP over the gateway's WebSocket, driven by the
// bridge (agent/bridge.py) over /phone/ws, and usable by hand.
//
// The page is the source of truth for registration and calls: every change is
// pushed to the bridge as a full snapshot ({type: "state"}); the bridge sends
// commands ({id, cmd, args}) and gets one reply each ({reply: id, ok, ...}).
//
// Genesys SIP Server answers and holds the agent's calls remotely with in-dialog
// NOTIFY "Event: talk" / "Event: hold" (also in the early dialog of a ringing
// call). JsSIP answers those with 489, so each session's request handler is
// wrapped to take them: talk answers a ringing call or retrieves a held one,
// hold puts the call on hold (re-INVITE a=sendonly).
import JsSIP from 'jssip';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.get('debug')) JsSIP.debug.enable('JsSIP:*');

const state = {
  bridge: 'connecting',          // connecting | connected | reconnecting | replaced
  registration: 'unregistered',  // unregistered | registering | registered | failed | disconnected
  registration_cause: null,
  dn: '',
  domain: '',
  gateway_ws: '',
  calls: [],                     // [{uuid, call_id, direction, peer, state, cause, started, answered}]
  audio: { mic_muted: false, speaker_muted: false, speaker_volume: 100, microphone: '' },
  rtt_ms: null,
  turn: null,                    // {urls, username} of the TURN server the gateway gave (no credential)
};

let ua = null;
let uaConfigKey = '';
let config = null;
let bridge = null;
let bridgeBackoff = 500;
const sessions = new Map();      // uuid -> {session, info}
let iceServer = null;            // the gateway's X-TURN: {urls, username, credential}
const remoteAudio = $('remote-audio');
const logLines = [];

// ------------------------------------------------------------------ helpers
function log(text) {
  const line = `${new Date().toLocaleTimeString('en-GB')} ${text}`;
  logLines.unshift(line);
  logLines.length = Math.min(logLines.length, 40);
  send({ type: 'log', text });
  renderLog();
}

function send(msg) {
  if (bridge && bridge.readyState === WebSocket.OPEN) bridge.send(JSON.stringify(msg));
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return 'c' + Math.random().toString(16).slice(2) + Date.now().toString(16);
}

function peerOf(session) {
  const id = session.remote_identity;
  if (!id) return '';
  return id.uri.user || id.uri.toString();
}

function liveCalls() {
  return state.calls.filter((c) => c.state !== 'ended');
}

// One word for the whole phone: what the agent most needs to see.
function overallState() {
  if (state.bridge === 'replaced') return 'replaced';
  const live = liveCalls();
  const order = ['ringing', 'talking', 'held', 'dialing'];
  for (const s of order) {
    if (live.some((c) => c.state === s)) return s;
  }
  return state.registration;
}

function snapshot() {
  return JSON.parse(JSON.stringify({ ...state, state: overallState() }));
}

function publish() {
  render();
  send({ type: 'state', state: snapshot() });
}

function callFor(args) {
  const id = args && args.uuid;
  if (id && sessions.has(id)) return sessions.get(id);
  if (!id || id === 'current') {
    const live = liveCalls();
    if (live.length) return sessions.get(live[live.length - 1].uuid);
  }
  throw new Error(id ? `no call ${id}` : 'no call');
}

function mediaOptions() {
  return {
    mediaConstraints: { audio: true, video: false },
    // The TURN server of the latest 200 OK to REGISTER, for calls made or answered.
    pcConfig: { iceServers: iceServer ? [iceServer] : [] },
    rtcOfferConstraints: { offerToReceiveAudio: true, offerToReceiveVideo: false },
  };
}

// ------------------------------------------------------------------ TURN
// The gateway gives TURN credentials only to an agent the PBX has just
// authenticated: header X-TURN (an RTCIceServer as JSON, valid for the
// registration plus a minute) in the 200 OK to every REGISTER. JsSIP's
// 'registered' event fires for the first registration only, not for the
// refreshes that bring new credentials, so the socket's incoming messages are
// read on their way to JsSIP (the `ondata` of JsSIP's socket interface).
function readTurn(data) {
  if (typeof data !== 'string' || !data.startsWith('SIP/2.0 2')) return;
  const head = data.split('\r\n\r\n', 1)[0];
  if (!/^CSeq:\s*\d+\s+REGISTER\s*$/im.test(head)) return;
  const m = head.match(/^X-TURN:\s*(.+?)\s*$/im);
  if (!m) return;
  try {
    const s = JSON.parse(m[1]);
    const urls = Array.isArray(s.urls) ? s.urls : [s.urls];
    if (!urls.length || !urls.every((u) => typeof u === 'string' && /^(turns?|stuns?):/.test(u))
        || typeof s.username !== 'string' || typeof s.credential !== 'string') {
      throw new Error('not an RTCIceServer');
    }
    const fresh = !iceServer || iceServer.username !== s.username;
    iceServer = { urls, username: s.username, credential: s.credential };
    state.turn = { urls, username: s.username };
    if (fresh) log(`TURN ${urls[0]} until ${new Date(Number(s.username.split(':')[0]) * 1000).toLocaleTimeString('en-GB')}`);
  } catch (err) {
    log(`X-TURN ignored: ${err.message}`);
  }
}

function watchTurn(socket) {
  let handler = null;
  Object.defineProperty(socket, 'ondata', {
    configurable: true,
    get() { return handler && ((data) => { readTurn(data); handler(data); }); },
    set(fn) { handler = fn; },
  });
  return socket;
}

// ------------------------------------------------------------------ UA
function startUA(args) {
  const key = JSON.stringify(args);
  if (ua && key === uaConfigKey && ['registered', 'registering'].includes(state.registration)) {
    return; // same registration already running (a reconnecting bridge resends it)
  }
  stopUA();
  config = args;
  uaConfigKey = key;
  state.dn = args.dn;
  state.domain = args.domain;
  state.gateway_ws = args.gateway_ws;
  state.registration = 'registering';
  state.registration_cause = null;
  const socket = watchTurn(new JsSIP.WebSocketInterface(args.gateway_ws));
  ua = new JsSIP.UA({
    sockets: [socket],
    uri: `sip:${args.dn}@${args.domain}`,
    authorization_user: args.dn,
    password: args.password || undefined,
    display_name: args.display_name || undefined,
    registrar_server: args.registrar,
    register: true,
    register_expires: args.expires || 600,
    session_timers: false,
    user_agent: `AgentPhone/0.1 JsSIP/${JsSIP.version}`,
    connection_recovery_min_interval: 2,
    connection_recovery_max_interval: 30,
  });
  const mine = ua;
  ua.on('connected', () => { if (ua === mine) log(`gateway connected ${args.gateway_ws}`); });
  ua.on('disconnected', (e) => {
    if (ua !== mine) return;
    state.registration = 'disconnected';
    state.registration_cause = e && e.reason ? String(e.reason) : 'WebSocket closed';
    log(`gateway disconnected (${state.registration_cause})`);
    publish();
  });
  ua.on('registered', () => {
    if (ua !== mine) return;
    state.registration = 'registered';
    state.registration_cause = null;
    log(`registered ${args.dn}`);
    publish();
  });
  ua.on('unregistered', (e) => {
    if (ua !== mine) return;
    state.registration = 'unregistered';
    state.registration_cause = e && e.cause ? String(e.cause) : null;
    log(`unregistered ${args.dn}`);
    publish();
  });
  ua.on('registrationFailed', (e) => {
    if (ua !== mine) return;
    state.registration = 'failed';
    state.registration_cause = e && e.response ? `${e.response.status_code} ${e.response.reason_phrase}` : String(e.cause);
    log(`registration failed: ${state.registration_cause}`);
    publish();
  });
  ua.on('newRTCSession', (e) => onNewSession(e));
  ua.start();
  log(`registering ${args.dn}@${args.domain} via ${args.gateway_ws}`);
  publish();
}

function stopUA() {
  if (!ua) return;
  const old = ua;
  ua = null;
  uaConfigKey = '';
  try { old.stop(); } catch (err) { console.warn(err); }
  state.registration = 'unregistered';
  iceServer = null;
  state.turn = null;
}

// ------------------------------------------------------------------ calls
function onNewSession(e) {
  const session = e.session;
  const info = {
    uuid: uuid(),
    call_id: (e.request && e.request.call_id) || '',
    direction: e.originator === 'remote' ? 'incoming' : 'outgoing',
    peer: peerOf(session),
    state: e.originator === 'remote' ? 'ringing' : 'dialing',
    cause: null,
    started: Date.now(),
    answered: null,
    remote_hold: false,
  };
  sessions.set(info.uuid, { session, info });
  state.calls.push(info);
  hookRemoteControl(session, info);

  const update = (s, cause) => {
    info.state = s;
    if (cause !== undefined) info.cause = cause;
    publish();
  };
  session.on('peerconnection', ({ peerconnection }) => attachMedia(peerconnection));
  if (session.connection) attachMedia(session.connection);
  session.on('progress', () => { if (info.direction === 'outgoing') log(`ringing at ${info.peer}`); });
  session.on('accepted', () => { info.answered = Date.now(); update('talking'); log(`talking with ${info.peer}`); });
  session.on('confirmed', () => { if (info.state !== 'held') update('talking'); });
  session.on('hold', ({ originator }) => {
    if (originator === 'local') { update('held'); log(`held ${info.peer}`); } else { info.remote_hold = true; publish(); }
  });
  session.on('unhold', ({ originator }) => {
    if (originator === 'local') { update('talking'); log(`retrieved ${info.peer}`); } else { info.remote_hold = false; publish(); }
  });
  const finish = (how) => (ev) => {
    update('ended', ev && ev.cause ? String(ev.cause) : how);
    log(`call with ${info.peer} ${how}${ev && ev.cause ? ` (${ev.cause}, by ${ev.originator})` : ''}`);
    setTimeout(() => {
      sessions.delete(info.uuid);
      state.calls = state.calls.filter((c) => c !== info);
      publish();
    }, 1500);
  };
  session.on('ended', finish('ended'));
  session.on('failed', finish('failed'));

  if (info.direction === 'incoming') {
    log(`incoming call from ${info.peer}`);
    const callInfo = e.request.getHeader('Call-Info') || '';
    if ((config && config.auto_answer) || /answer-after\s*=\s*0\b/i.test(callInfo)) {
      log('auto-answer');
      setTimeout(() => answer(session, info), 0);
    }
  } else {
    log(`calling ${info.peer}`);
  }
  publish();
}

function hookRemoteControl(session, info) {
  const original = session.receiveRequest.bind(session);
  session.receiveRequest = (request) => {
    if (request.method === 'NOTIFY') {
      const event = (request.getHeader('Event') || '').split(';')[0].trim().toLowerCase();
      if (event === 'talk' || event === 'hold') {
        request.reply(200);
        log(`NOTIFY Event: ${event}`);
        remoteControl(session, info, event);
        return;
      }
    }
    original(request);
  };
}

function remoteControl(session, info, event) {
  try {
    if (event === 'talk') {
      if (info.state === 'ringing') answer(session, info);
      else if (session.isOnHold().local) session.unhold();
    } else if (event === 'hold') {
      if (session.isEstablished() && !session.isOnHold().local) session.hold();
    }
  } catch (err) {
    log(`remote ${event} failed: ${err.message}`);
  }
}

function answer(session, info) {
  if (info.state !== 'ringing') throw new Error(`call is ${info.state}, not ringing`);
  info.state = 'answering';
  session.answer(mediaOptions());
  applyMute();
}

function attachMedia(pc) {
  if (pc.__agentHooked) return;
  pc.__agentHooked = true;
  pc.addEventListener('track', (ev) => {
    const stream = (ev.streams && ev.streams[0]) || new MediaStream([ev.track]);
    remoteAudio.srcObject = stream;
    applySpeaker();
    const p = remoteAudio.play();
    if (p && p.catch) {
      p.then(() => { $('audio-hint').hidden = true; }).catch((err) => {
        // Only an autoplay refusal needs the agent; an interrupted play() does not.
        if (err && err.name === 'NotAllowedError') $('audio-hint').hidden = false;
      });
    }
  });
}

function applyMute() {
  for (const { session } of sessions.values()) {
    try {
      if (!session.isEstablished() && !session.isInProgress()) continue;
      if (state.audio.mic_muted) session.mute({ audio: true }); else session.unmute({ audio: true });
    } catch (err) { /* not established yet */ }
  }
}

function applySpeaker() {
  remoteAudio.muted = !!state.audio.speaker_muted;
  remoteAudio.volume = Math.max(0, Math.min(1, state.audio.speaker_volume / 100));
}

// Inbound/outbound RTP of a call, from its RTCPeerConnection (for tests and /session).
async function stats(id) {
  const { session } = callFor({ uuid: id });
  const pc = session.connection;
  const out = { bytesReceived: 0, packetsReceived: 0, bytesSent: 0, packetsSent: 0,
    audioLevel: null, codec: null, rtt_ms: null, iceState: pc ? pc.iceConnectionState : null };
  if (!pc) return out;
  const report = await pc.getStats();
  const codecs = {};
  report.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.bytesReceived += s.bytesReceived || 0;
      out.packetsReceived += s.packetsReceived || 0;
      if (s.audioLevel !== undefined) out.audioLevel = s.audioLevel;
      if (s.codecId) out.codec = codecs[s.codecId] || out.codec;
    } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.bytesSent += s.bytesSent || 0;
      out.packetsSent += s.packetsSent || 0;
    } else if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) {
      out.rtt_ms = Math.round(s.currentRoundTripTime * 1000);
    }
  });
  return out;
}

// ------------------------------------------------------------------ commands
const commands = {
  hello(args) { state.gateway_ws = args.gateway_ws || state.gateway_ws; return {}; },
  register(args) { startUA(args); return { registration: state.registration }; },
  unregister() {
    const n = liveCalls().length;
    if (ua) {
      const mine = ua;
      // JsSIP stop(): ends calls, sends the un-REGISTER, then closes the WebSocket.
      ua.once && ua.once('unregistered', () => publish());
      ua = null;
      uaConfigKey = '';
      mine.stop();
    }
    state.registration = 'unregistered';
    log('unregister');
    publish();
    return { released: n };
  },
  make(args) {
    if (!ua || state.registration !== 'registered') throw new Error(`not registered (${state.registration})`);
    const t = String(args.target);
    const target = /^sips?:/.test(t) ? t : (t.includes('@') ? `sip:${t}` : `sip:${t}@${config.domain}`);
    const session = ua.call(target, mediaOptions());
    for (const { session: s, info } of sessions.values()) {
      if (s === session) return { uuid: info.uuid, call_id: info.call_id };
    }
    return {};
  },
  answer(args) {
    const { session, info } = callFor(args);
    answer(session, info);
    return { state: info.state };
  },
  hangup(args) {
    const { session } = callFor(args);
    session.terminate();
    return {};
  },
  hold(args) {
    const { session, info } = callFor(args);
    if (!session.isEstablished()) throw new Error(`call is ${info.state}`);
    if (!session.isOnHold().local && !session.hold()) throw new Error('hold refused (renegotiation in progress)');
    return {};
  },
  retrieve(args) {
    const { session, info } = callFor(args);
    if (!session.isEstablished()) throw new Error(`call is ${info.state}`);
    if (session.isOnHold().local && !session.unhold()) throw new Error('retrieve refused (renegotiation in progress)');
    return {};
  },
  dtmf(args) {
    const { session, info } = callFor(args);
    if (!session.isEstablished()) throw new Error(`call is ${info.state}`);
    let transportType = config && config.dtmf === 'info' ? 'INFO' : 'RFC2833';
    const opts = { duration: 120, interToneGap: 80 };
    try {
      session.sendDTMF(String(args.tones), { ...opts, transportType });
    } catch (err) {
      if (transportType !== 'RFC2833') throw err;
      // The far end did not accept telephone-event: SIP INFO still carries the digits.
      transportType = 'INFO';
      session.sendDTMF(String(args.tones), { ...opts, transportType });
    }
    log(`DTMF ${args.tones} (${transportType})`);
    return { tones: args.tones, transport: transportType };
  },
  audio(args) {
    if ('mic_muted' in args) state.audio.mic_muted = !!args.mic_muted;
    if ('speaker_muted' in args) state.audio.speaker_muted = !!args.speaker_muted;
    if ('speaker_volume' in args) state.audio.speaker_volume = Number(args.speaker_volume);
    applyMute();
    applySpeaker();
    publish();
    return { audio: state.audio };
  },
  hangup_all() {
    let n = 0;
    for (const { session } of sessions.values()) {
      if (!session.isEnded()) { session.terminate(); n += 1; }
    }
    return { released: n };
  },
};

async function onCommand(msg) {
  const fn = commands[msg.cmd];
  let reply;
  try {
    if (!fn) throw new Error(`unknown command ${msg.cmd}`);
    reply = { reply: msg.id, ok: true, result: await fn(msg.args || {}) };
  } catch (err) {
    reply = { reply: msg.id, ok: false, error: err && err.message ? err.message : String(err) };
    log(`${msg.cmd} failed: ${reply.error}`);
  }
  if (msg.id !== undefined) send(reply);
}

// ------------------------------------------------------------------ bridge link
function connectBridge() {
  const ws = new WebSocket(`wss://${location.host}/phone/ws`);
  bridge = ws;
  ws.onopen = () => {
    bridgeBackoff = 500;
    state.bridge = 'connected';
    publish();
  };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (err) { return; }
    if (msg && msg.cmd) onCommand(msg);
  };
  ws.onclose = (ev) => {
    if (bridge !== ws) return;
    if (ev.code === 4001) {
      // Another phone page took over: one agent, one page.
      state.bridge = 'replaced';
      stopUA();
      render();
      return;
    }
    state.bridge = 'reconnecting';
    render();
    setTimeout(connectBridge, bridgeBackoff);
    bridgeBackoff = Math.min(bridgeBackoff * 2, 10000);
  };
}

// ------------------------------------------------------------------ UI
const LABELS = {
  starting: ['Starting…', ''],
  unregistered: ['Not registered', 'Waiting for Workspace to register a DN'],
  registering: ['Registering…', ''],
  registered: ['Registered', 'Ready for calls'],
  failed: ['Registration failed', ''],
  disconnected: ['Gateway unreachable', 'Reconnecting…'],
  ringing: ['Ringing', ''],
  dialing: ['Calling…', ''],
  talking: ['Talking', ''],
  held: ['On hold', ''],
  replaced: ['Open in another tab', 'This page no longer controls the phone'],
};

function fmt(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

function render() {
  const overall = overallState();
  document.body.dataset.state = overall;
  const [title, detail] = LABELS[overall] || [overall, ''];
  const live = liveCalls();
  const call = live.length ? live[live.length - 1] : null;
  $('status-text').textContent = title;
  let d = detail;
  if (call && ['ringing', 'dialing', 'talking', 'held'].includes(overall)) {
    d = `${call.direction === 'incoming' ? 'from' : 'to'} ${call.peer}`;
  } else if (overall === 'registered') {
    d = `DN ${state.dn} · ready for calls`;
  } else if (overall === 'registering') {
    d = `DN ${state.dn} at ${state.domain}`;
  } else if (state.registration_cause && ['failed', 'disconnected', 'unregistered'].includes(overall)) {
    d = state.registration_cause;
  }
  $('status-detail').textContent = d;
  $('identity').textContent = state.dn ? `DN ${state.dn}` : 'no DN yet';
  $('bridge-status').textContent = `bridge: ${state.bridge}`;
  $('gateway').textContent = `gateway: ${state.gateway_ws || '—'}`;

  $('call').hidden = !call;
  if (call) {
    $('call-direction').textContent = call.direction === 'incoming' ? 'Incoming from' : 'Outgoing to';
    $('call-peer').textContent = call.peer;
    $('call-timer').textContent = call.answered ? fmt(Date.now() - call.answered) : '--:--';
    // Only the buttons that make sense now.
    $('btn-answer').hidden = call.state !== 'ringing';
    $('btn-hold').hidden = call.state !== 'talking';
    $('btn-retrieve').hidden = call.state !== 'held';
    $('btn-hangup').textContent = call.state === 'ringing' ? 'Reject' : 'Hang up';
  }
  $('btn-mute').setAttribute('aria-pressed', String(!!state.audio.mic_muted));
  $('btn-mute').textContent = state.audio.mic_muted ? 'Unmute' : 'Mute';
  $('btn-call').disabled = state.registration !== 'registered';
}

function renderLog() {
  const ol = $('log');
  ol.replaceChildren(...logLines.slice(0, 8).map((t) => {
    const li = document.createElement('li');
    li.textContent = t;
    return li;
  }));
}

function wireUI() {
  const run = (cmd, args = {}) => onCommand({ cmd, args });
  $('btn-answer').onclick = () => run('answer');
  $('btn-hangup').onclick = () => run('hangup');
  $('btn-hold').onclick = () => run('hold');
  $('btn-retrieve').onclick = () => run('retrieve');
  $('btn-mute').onclick = () => run('audio', { mic_muted: !state.audio.mic_muted });
  $('dial-form').onsubmit = (ev) => {
    ev.preventDefault();
    const t = $('dial-target').value.trim();
    if (t) run('make', { target: t });
  };
  const keys = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];
  $('keypad').replaceChildren(...keys.map((k) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = k;
    b.onclick = () => { if (liveCalls().length) run('dtmf', { tones: k }); else $('dial-target').value += k; };
    return b;
  }));
  // Browsers may block audio until the agent interacts with the page once.
  document.addEventListener('click', () => {
    if (remoteAudio.srcObject) remoteAudio.play().then(() => { $('audio-hint').hidden = true; }).catch(() => {});
  });
  setInterval(() => { if (liveCalls().some((c) => c.answered)) render(); }, 1000);
  setInterval(async () => {
    const live = liveCalls().filter((c) => c.answered);
    if (!live.length) return;
    try {
      const s = await stats(live[live.length - 1].uuid);
      if (s.rtt_ms !== state.rtt_ms) { state.rtt_ms = s.rtt_ms; }
    } catch (err) { /* call just ended */ }
  }, 5000);
}

window.addEventListener('beforeunload', () => { if (ua) ua.stop(); });

window.phone = {
  state: snapshot,
  stats,
  commands,
  version: JsSIP.version,
};

wireUI();
render();
connectBridge();
