// The Char-RNN playground. Plain browser JavaScript, no build step, no libraries.
//
// Every model call is a TF Serving REST call on this page's origin, so the page works
// against serving.server and against the real TF Serving behind a reverse proxy:
//   GET  /v1/models/<m>                 which version is AVAILABLE
//   GET  /v1/models/<m>/metadata        the one_step state size
//   POST /v1/models/<m>:predict         generate (streamed in chunks), score, one_step
//   GET  /playground/info/<m>           eval loss, corpus, vocabulary (serving.server only;
//                                       without it the page says "unknown")
// Errors (server down, a limit, bad input) are shown in the page's #error box.
'use strict';

const PARAMS = new URLSearchParams(location.search);
const MODEL = PARAMS.get('model') || 'char_rnn';
// ?api=https://host:port: the TF Serving REST API on another origin (it must allow CORS).
const ROOT = (PARAMS.get('api') || '').replace(/\/+$/, '');
const API = `${ROOT}/v1/models/${encodeURIComponent(MODEL)}`;
const INFO = `${ROOT}/playground/info/${encodeURIComponent(MODEL)}`;
const FIRST_CHUNK = 4;         // characters in the first generate call: text shows at once
const MAX_CHUNK = 32;          // ... doubling up to this
const SCORE_BATCH = 32;        // prefixes per score call
const MAX_SURPRISE_CHARS = 2000;
const TOP_K = 5;

const $ = (id) => document.getElementById(id);
const state = {info: null, stateSize: null, running: null, hoverCache: new Map()};

// ------------------------------------------------------------------ errors and calls
function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
}
function clearError() { $('error').hidden = true; $('error').textContent = ''; }

class ApiError extends Error {}

async function call(path, body, signal) {
  let response;
  try {
    response = await fetch(path, body === undefined ? {signal, cache: 'no-store'} : {
      method: 'POST', signal, cache: 'no-store',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(`Cannot reach the model server at ${ROOT || location.origin} ` +
                       `(${e.message}). Is it running?`);
  }
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch (e) { /* not JSON: a proxy's error page */ }
  if (!response.ok) {
    const detail = json && json.error ? json.error : text.slice(0, 300) || response.statusText;
    throw new ApiError(`${path.split('/').pop()}: HTTP ${response.status}: ${detail}`);
  }
  if (json === null) throw new ApiError(`${path}: the answer is not JSON`);
  return json;
}

async function predict(signature, inputs, signal) {
  const out = await call(`${API}:predict`, {signature_name: signature, inputs}, signal);
  return out.outputs;
}

// ------------------------------------------------------------------ model info
function fmt(x, digits) { return typeof x === 'number' ? x.toFixed(digits) : 'unknown'; }

function corpusText(corpus) {
  if (!corpus) return 'unknown (not recorded with this model)';
  if (typeof corpus === 'string') return corpus;
  if (Array.isArray(corpus)) return corpus.join(', ');
  const parts = [];
  const where = corpus.sources || corpus.uri || corpus.source;
  if (where) parts.push(Array.isArray(where) ? where.join(', ') : where);
  if (typeof corpus.num_chars === 'number') parts.push(`${corpus.num_chars.toLocaleString('en')} chars`);
  if (corpus.fingerprint) parts.push(`fingerprint ${String(corpus.fingerprint).slice(0, 12)}`);
  return parts.join(', ') || JSON.stringify(corpus);
}

async function loadInfo() {
  $('info-name').textContent = MODEL;
  let version = null;
  try {
    const status = await call(API);
    const available = (status.model_version_status || [])
        .filter((v) => v.state === 'AVAILABLE').map((v) => Number(v.version));
    version = available.length ? Math.max(...available) : null;
    $('info-version').textContent = version === null ? 'none available' : String(version);
  } catch (e) {
    $('info-version').textContent = 'unknown';
    showError(e.message);
    return;
  }
  try {
    const meta = await call(`${API}/metadata`);
    const sig = meta.metadata.signature_def.signature_def.one_step;
    state.stateSize = Number(sig.inputs.states.tensor_shape.dim[1].size);
  } catch (e) { state.stateSize = null; }
  let info = null;
  try { info = await call(INFO); } catch (e) { info = null; }   // real TF Serving: no info
  if (info && version !== null && info.version !== version) info = null;   // raced a reload
  if (state.info && info && state.info.version !== info.version) state.hoverCache.clear();
  state.info = info;
  if (info) {
    $('info-loss').textContent = `${fmt(info.eval_loss, 3)} nats/char` +
        (typeof info.bits_per_char === 'number' ? ` (${fmt(info.bits_per_char, 3)} bits/char)` : '');
    $('info-corpus').textContent = corpusText(info.corpus);
    const bits = [];
    if (info.config && info.config.rnn_type) {
      bits.push(`${info.config.rnn_type.toUpperCase()}-${info.config.rnn_units}` +
                (info.config.num_layers > 1 ? ` x${info.config.num_layers}` : ''));
    }
    if (typeof info.train_steps === 'number') bits.push(`${info.train_steps} steps`);
    if (typeof info.train_seconds === 'number') bits.push(`${Math.round(info.train_seconds)} s`);
    if (typeof info.vocab_size === 'number') bits.push(`${info.vocab_size} symbols`);
    $('info-training').textContent = bits.join(', ') || 'unknown';
  } else {
    for (const id of ['info-loss', 'info-corpus', 'info-training']) {
      $(id).textContent = 'unknown (no /playground/info on this server)';
    }
  }
}

// ------------------------------------------------------------------ generate
function readInteger(id, label, min) {
  const raw = $(id).value.trim();
  const value = Number(raw);
  if (raw === '' || !Number.isInteger(value) || value < min) {
    throw new ApiError(`${label} must be a whole number >= ${min} (got "${raw}").`);
  }
  return value;
}

function randomSeed() { return Math.floor(Math.random() * 2147483647); }

async function generate(event) {
  event.preventDefault();
  if (state.running) return;
  clearError();
  let length, temperature, seed;
  const prompt = $('prompt').value;
  try {
    length = readInteger('length', 'Length', 1);
    const limit = state.info && state.info.config && state.info.config.max_generate_chars;
    if (typeof limit === 'number' && length > limit) {
      throw new ApiError(`Length ${length} is above this model's limit of ${limit} ` +
                         'characters (max_generate_chars).');
    }
    temperature = Number($('temperature').value);   // the model checks its range
    if ($('temperature').value.trim() === '' || !Number.isFinite(temperature)) {
      throw new ApiError('Temperature must be a number (0 = greedy).');
    }
    seed = $('seed').value.trim() === '' ? null : readInteger('seed', 'Seed', 0);
  } catch (e) { showError(e.message); return; }

  const run = {controller: new AbortController(), queue: [], done: false, shown: 0};
  state.running = run;
  $('generate').disabled = true; $('stop').disabled = false; $('to-surprise').disabled = true;
  $('output-prompt').textContent = prompt;
  $('output-text').textContent = '';
  $('generate-status').textContent = 'generating…';
  const reveal = setInterval(() => {   // one character per tick, faster when behind
    const n = Math.max(1, Math.ceil(run.queue.length / 8));
    if (run.queue.length) {
      $('output-text').textContent += run.queue.splice(0, n).join('');
      $('output').scrollTop = $('output').scrollHeight;
    }
  }, 16);

  let generated = '';
  let chunk = FIRST_CHUNK;
  let calls = 0;
  const started = performance.now();
  try {
    while (Array.from(generated).length < length && !run.controller.signal.aborted) {
      const want = Math.min(chunk, length - Array.from(generated).length);
      const out = await predict('generate', {
        prompt: [prompt + generated], num_chars: want, temperature,
        seed: seed === null ? randomSeed() : seed + calls,
      }, run.controller.signal);
      const piece = out.text[0];
      calls += 1;
      generated += piece;
      run.queue.push(...Array.from(piece));
      chunk = Math.min(chunk * 2, MAX_CHUNK);
      if (!piece) break;
    }
    while (run.queue.length && !run.controller.signal.aborted) {
      await new Promise((resolve) => setTimeout(resolve, 16));
    }
    const seconds = (performance.now() - started) / 1000;
    $('generate-status').textContent = run.controller.signal.aborted
        ? `stopped after ${Array.from($('output-text').textContent).length} characters`
        : `${Array.from(generated).length} characters in ${seconds.toFixed(1)} s ` +
          `(${calls} generate calls)`;
  } catch (e) {
    if (e.name === 'AbortError') {
      $('generate-status').textContent =
          `stopped after ${Array.from($('output-text').textContent).length} characters`;
    } else {
      $('generate-status').textContent = 'failed';
      showError(e.message);
    }
  } finally {
    clearInterval(reveal);
    if (!run.controller.signal.aborted) $('output-text').textContent += run.queue.join('');
    run.queue.length = 0;
    state.running = null;
    $('generate').disabled = false; $('stop').disabled = true;
    $('to-surprise').disabled = !$('output-text').textContent;
  }
}

function stop() {
  if (state.running) state.running.controller.abort();
}

// ------------------------------------------------------------------ how surprising
function colourFor(p) {
  // log scale: p = 1 -> green, 1e-3 and below -> red
  const t = Math.max(0, Math.min(1, (Math.log10(Math.max(p, 1e-12)) + 3) / 3));
  return `hsl(${Math.round(120 * t)} 70% 82%)`;
}

function shown(ch) {
  return ch === '\n' ? '\\n' : ch === ' ' ? 'space' : ch === '\t' ? '\\t' : ch;
}

async function surprise(event) {
  if (event) event.preventDefault();
  clearError();
  const chars = Array.from($('surprise-text').value);
  const box = $('heatmap');
  box.textContent = '';
  state.hoverCache.clear();
  if (chars.length < 2) { showError('Type at least two characters to colour.'); return; }
  if (chars.length > MAX_SURPRISE_CHARS) {
    showError(`The text is ${chars.length} characters; the page colours at most ` +
              `${MAX_SURPRISE_CHARS}.`);
    return;
  }
  const spans = chars.map((ch, i) => {
    const span = document.createElement('span');
    span.className = i === 0 ? 'c first' : 'c';
    span.textContent = ch;
    span.dataset.index = String(i);
    box.appendChild(span);
    return span;
  });
  $('score').disabled = true;
  $('surprise-status').textContent = 'scoring…';
  // log p(char t | chars before t) = score(prefix of t+1) - score(prefix of t).
  const ll = new Array(chars.length + 1).fill(null);
  ll[1] = 0;
  try {
    for (let start = 2; start <= chars.length; start += SCORE_BATCH) {
      const lengths = [];
      for (let k = start; k < start + SCORE_BATCH && k <= chars.length; k++) lengths.push(k);
      if (ll[start - 1] === null) lengths.unshift(start - 1);
      const out = await predict('score', {text: lengths.map((k) => chars.slice(0, k).join(''))});
      lengths.forEach((k, j) => { ll[k] = out.log_likelihood[j]; });
      for (const k of lengths) {
        if (k < 2) continue;
        const p = Math.exp(ll[k] - ll[k - 1]);
        const span = spans[k - 1];
        span.dataset.p = String(p);
        span.style.background = colourFor(p);
      }
      $('surprise-status').textContent = `scored ${Math.min(start + SCORE_BATCH - 1, chars.length)}` +
                                         ` of ${chars.length} characters`;
    }
    const total = ll[chars.length];
    $('surprise-status').textContent =
        `${(-total / (chars.length - 1)).toFixed(3)} nats/char over ${chars.length - 1} characters`;
  } catch (e) {
    $('surprise-status').textContent = 'failed';
    showError(e.message);
  } finally {
    $('score').disabled = false;
  }
}

async function alternatives(index) {
  // one_step over the text before `index` (from a zero state): the model's next-char logits.
  if (state.hoverCache.has(index)) return state.hoverCache.get(index);
  if (!state.stateSize) throw new ApiError('one_step is not in this model\'s metadata');
  const prefix = Array.from($('surprise-text').value).slice(0, index).join('');
  const out = await predict('one_step', {
    inputs: [prefix], states: [new Array(state.stateSize).fill(0)], temperature: 0});
  const logits = out.logits[0];
  const peak = Math.max(...logits);
  const exps = logits.map((l) => Math.exp(l - peak));
  const sum = exps.reduce((a, b) => a + b, 0);
  const tokens = state.info && state.info.tokens;
  const ranked = exps.map((e, id) => ({id, p: e / sum, label: tokens ? tokens[id] : `#${id}`}))
      .sort((a, b) => b.p - a.p);
  state.hoverCache.set(index, ranked);
  return ranked;
}

async function hover(event) {
  const span = event.target.closest('#heatmap span.c');
  const tip = $('tooltip');
  if (!span) { tip.hidden = true; return; }
  const index = Number(span.dataset.index);
  const rect = span.getBoundingClientRect();
  tip.style.left = `${Math.round(rect.left)}px`;
  tip.style.top = `${Math.round(rect.bottom + 6)}px`;
  if (index === 0) {
    tip.textContent = 'the first character: nothing before it to predict from';
    tip.hidden = false;
    return;
  }
  const actual = span.textContent;
  const p = span.dataset.p ? Number(span.dataset.p) : null;
  tip.dataset.for = String(index);
  tip.textContent = `p(${shown(actual)}) = ${p === null ? '…' : p.toFixed(4)}; alternatives…`;
  tip.hidden = false;
  try {
    const ranked = await alternatives(index);
    if (tip.dataset.for !== String(index)) return;   // the pointer moved on meanwhile
    const table = document.createElement('table');
    const head = table.insertRow();
    head.insertCell().textContent = `after ${index} chars`;
    head.insertCell().textContent = `p(${shown(actual)}) = ${p === null ? '?' : p.toFixed(4)}`;
    for (const alt of ranked.slice(0, TOP_K)) {
      const row = table.insertRow();
      row.className = alt.label === actual ? 'actual alt' : 'alt';
      row.insertCell().textContent = shown(alt.label);
      row.insertCell().textContent = alt.p.toFixed(4);
    }
    tip.textContent = '';
    tip.appendChild(table);
  } catch (e) {
    if (tip.dataset.for === String(index)) tip.textContent = `alternatives unavailable: ${e.message}`;
  }
}

// ------------------------------------------------------------------ wiring
$('generate-form').addEventListener('submit', generate);
$('stop').addEventListener('click', stop);
$('surprise-form').addEventListener('submit', surprise);
$('to-surprise').addEventListener('click', () => {
  $('surprise-text').value = $('output-prompt').textContent + $('output-text').textContent;
  surprise();
});
$('heatmap').addEventListener('mouseover', hover);
$('heatmap').addEventListener('mouseleave', () => { $('tooltip').hidden = true; });
loadInfo();
setInterval(() => { if (!state.running) loadInfo(); }, 15000);   // a new version, a rollback
