// lore web page: ask (streamed over SSE), search, citations, passages.
// Plain browser JavaScript, no build step. All data is written with textContent.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    status: $('status'), keyform: $('keyform'), key: $('key'),
    askform: $('askform'), question: $('question'), mode: $('mode'), adapter: $('adapter'),
    ask: $('ask'), stop: $('stop'), search: $('search'), error: $('error'),
    answerSection: $('answer-section'), answer: $('answer'), citations: $('citations'),
    sourcesBox: $('sources-box'), sources: $('sources'),
    hitsSection: $('hits-section'), hits: $('hits'),
    passage: $('passage'), passageTitle: $('passage-title'), passageMeta: $('passage-meta'),
    passageText: $('passage-text'), newchat: $('newchat'), rewritten: $('rewritten'),
    verdict: $('verdict'),
  };
  const KEY_STORE = 'lore.apiKey';
  let memKey = '';
  let controller = null;
  let answerNode = null;
  let refs = new Map(); // n -> citation or source, for inline [n] markers
  // The conversation so far ({role, content}), sent with each follow-up question so the
  // server can rewrite it to stand alone. "New conversation" clears it.
  let conversation = [];
  let asked = '';
  window.loreTokenEvents = 0;

  // ---- API key -------------------------------------------------------------
  function getKey() {
    try { return localStorage.getItem(KEY_STORE) || memKey; } catch { return memKey; }
  }
  function setKey(k) {
    memKey = k;
    try { localStorage.setItem(KEY_STORE, k); } catch { /* storage disabled: keep in memory */ }
  }
  const params = new URLSearchParams(location.search);
  if (params.has('key')) { // read once (for tests), then drop it from the address bar
    setKey(params.get('key') || '');
    params.delete('key');
    const q = params.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + location.hash);
  }
  function askForKey(message) {
    els.keyform.hidden = false;
    setStatus(message || 'An API key is required.');
    els.key.focus();
  }
  els.keyform.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const k = els.key.value.trim();
    if (!k) return;
    setKey(k);
    els.key.value = '';
    els.keyform.hidden = true;
    clearError();
    setStatus('API key saved.');
    loadAdapters();
  });

  // ---- helpers -------------------------------------------------------------
  function setStatus(text) { els.status.textContent = text; }
  function setState(s) { document.body.dataset.state = s; }
  function showError(message) { els.error.textContent = message; els.error.hidden = false; }
  function clearError() { els.error.textContent = ''; els.error.hidden = true; }

  async function api(path, { method = 'GET', body, signal, accept = 'application/json' } = {}) {
    const headers = { Accept: accept };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const key = getKey();
    if (key) headers.Authorization = 'Bearer ' + key;
    const res = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) {
      let message = `HTTP ${res.status} ${res.statusText}`.trim();
      try {
        const j = await res.json();
        if (j && j.error && j.error.message) message = j.error.message;
      } catch { /* not JSON */ }
      if (res.status === 401) askForKey(message);
      const err = new Error(message);
      err.status = res.status;
      throw err;
    }
    return res;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const lines = (c) => (c.start_line != null ? `${c.start_line}-${c.end_line ?? c.start_line}` : '');
  const label = (c) => `${c.n != null ? `[${c.n}] ` : ''}${c.path}${lines(c) ? ':' + lines(c) : ''}`;

  // ---- passage dialog ------------------------------------------------------
  function openPassage(c) {
    els.passageTitle.textContent = c.path || 'Passage';
    const meta = [];
    if (lines(c)) meta.push(`lines ${lines(c)}`);
    if (c.page != null) meta.push(`page ${c.page}`);
    if (c.heading) meta.push(c.heading);
    if (c.inferred) meta.push('citation inferred');
    els.passageMeta.textContent = meta.join(' · ');
    els.passageText.textContent = c.text || '(no passage text)';
    if (typeof els.passage.showModal === 'function') {
      if (!els.passage.open) els.passage.showModal();
    } else {
      els.passage.setAttribute('open', '');
    }
  }
  els.passage.addEventListener('click', (ev) => { // click on the backdrop closes
    if (ev.target === els.passage) els.passage.close();
  });

  function renderRefs(list, items, cls) {
    list.replaceChildren();
    for (const c of items) {
      const b = el('button', cls, label(c));
      b.type = 'button';
      if (c.heading) b.append(el('span', 'heading', ` — ${c.heading}`));
      if (c.inferred) b.append(' ', el('span', 'badge', 'inferred'));
      b.addEventListener('click', () => openPassage(c));
      const li = el('li');
      li.append(b);
      list.append(li);
    }
  }

  // ---- answer --------------------------------------------------------------
  function resetAnswer() {
    clearError();
    window.loreTokenEvents = 0;
    refs = new Map();
    answerNode = document.createTextNode('');
    els.answer.replaceChildren(answerNode);
    els.citations.replaceChildren();
    els.sources.replaceChildren();
    els.sourcesBox.hidden = true;
    els.answerSection.hidden = false;
  }

  // Turn "[n]" markers that match a citation/source into buttons (text stays identical).
  function linkifyAnswer() {
    const text = answerNode ? answerNode.data : els.answer.textContent;
    const parts = [];
    let last = 0;
    for (const m of text.matchAll(/\[(\d+)\]/g)) {
      const ref = refs.get(Number(m[1]));
      if (!ref) continue;
      parts.push(document.createTextNode(text.slice(last, m.index)));
      const b = el('button', 'marker', m[0]);
      b.type = 'button';
      b.title = label(ref);
      b.addEventListener('click', () => openPassage(ref));
      parts.push(b);
      last = m.index + m[0].length;
    }
    parts.push(document.createTextNode(text.slice(last)));
    els.answer.replaceChildren(...parts);
    answerNode = null;
  }

  function finish(d) {
    const citations = Array.isArray(d.citations) ? d.citations : [];
    for (const c of citations) if (c.n != null) refs.set(Number(c.n), c);
    renderRefs(els.citations, citations, 'citation');
    if (!citations.length) els.citations.append(el('li', 'empty', 'No citations.'));
    linkifyAnswer();
    const bits = ['Done'];
    if (d.usage && d.usage.completion_tokens != null) bits.push(`${d.usage.completion_tokens} tokens`);
    if (d.finish_reason) bits.push(d.finish_reason === 'length' ? 'stopped at max_tokens' : d.finish_reason);
    if (d.model) bits.push(d.model);
    setStatus(bits.join(' · ') + '.');
    showVerdict(d);
    const said = els.answer.textContent.trim();
    if (asked && said) {
      conversation.push({ role: 'user', content: asked }, { role: 'assistant', content: said });
      els.newchat.hidden = false;
    }
    setState('done');
  }

  function showVerdict(d) {
    const notes = [];
    const restated = d.verdict && d.verdict.declined_by === 'restated';
    if (restated) notes.push('The answer only restates the question: the passages may not hold the answer.');
    else if (d.abstained) notes.push('The knowledge base does not hold the answer.');
    const unsupported = (d.verdict && Array.isArray(d.verdict.unsupported)) ? d.verdict.unsupported : [];
    if (unsupported.length) notes.push(`Not found in the passages: ${unsupported.join(' ')}`);
    els.verdict.textContent = notes.join(' ');
    els.verdict.hidden = notes.length === 0;
  }

  function showRewritten(text) {
    els.rewritten.textContent = text ? `Searched for: ${text}` : '';
    els.rewritten.hidden = !text;
  }

  function fail(message) {
    showError(message);
    setStatus('Error.');
    setState('error');
  }

  function handleEvent(event, data) {
    let obj = null;
    try { obj = JSON.parse(data); } catch { /* handled below */ }
    if (event === 'token') {
      if (obj && typeof obj.text === 'string') {
        window.loreTokenEvents += 1;
        answerNode.appendData(obj.text);
      }
    } else if (event === 'sources') {
      const sources = (obj && Array.isArray(obj.sources)) ? obj.sources : [];
      for (const s of sources) if (s.n != null && !refs.has(Number(s.n))) refs.set(Number(s.n), s);
      renderRefs(els.sources, sources, 'source');
      if (obj && obj.rewritten_question) showRewritten(obj.rewritten_question);
      for (const w of (obj && Array.isArray(obj.warnings)) ? obj.warnings : []) els.sources.append(el('li', 'warning', w));
      els.sourcesBox.hidden = els.sources.childElementCount === 0;
      setStatus('Generating…');
    } else if (event === 'done') {
      finish(obj || {});
    } else if (event === 'error') {
      fail((obj && obj.error && obj.error.message) || data || 'The server reported an error.');
    }
  }

  // Incremental SSE parser: feed it decoded text in arbitrary pieces.
  function sseParser(onEvent) {
    let buf = '';
    function emit(block) {
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let value = c < 0 ? '' : line.slice(c + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
      if (data.length) onEvent(event, data.join('\n'));
    }
    return (chunk, end) => {
      buf += chunk;
      let hold = '';
      if (!end && buf.endsWith('\r')) { hold = '\r'; buf = buf.slice(0, -1); } // maybe half of \r\n
      buf = buf.replace(/\r\n?/g, '\n');
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        emit(buf.slice(0, i));
        buf = buf.slice(i + 2);
      }
      if (end) { if (buf.trim()) emit(buf); buf = ''; }
      buf += hold;
    };
  }

  function setBusy(busy) {
    els.ask.disabled = busy;
    els.search.disabled = busy;
    els.stop.hidden = !busy;
  }

  async function ask() {
    const question = els.question.value.trim();
    if (!question || controller) return;
    resetAnswer();
    showRewritten('');
    els.verdict.hidden = true;
    asked = question;
    setState('streaming');
    setStatus(conversation.length ? 'Reading the conversation…' : 'Retrieving…');
    controller = new AbortController();
    setBusy(true);
    const body = { mode: els.mode.value, adapter: els.adapter.value || undefined, stream: true };
    if (conversation.length) body.messages = [...conversation, { role: 'user', content: question }];
    else body.question = question;
    try {
      const res = await api('/v1/ask', {
        method: 'POST', signal: controller.signal, accept: 'text/event-stream', body,
      });
      if (!(res.headers.get('content-type') || '').includes('text/event-stream')) {
        const j = await res.json(); // a server that answered without streaming
        answerNode.appendData(j.answer || '');
        if (j.rewritten_question) showRewritten(j.rewritten_question);
        finish(j);
        return;
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const feed = sseParser(handleEvent);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { feed(decoder.decode(), true); break; }
        feed(decoder.decode(value, { stream: true }), false);
        if (document.body.dataset.state !== 'streaming') { reader.cancel().catch(() => {}); break; }
      }
      if (document.body.dataset.state === 'streaming') fail('The answer stream ended before it was complete.');
    } catch (e) {
      if (e.name === 'AbortError') {
        setState('error');
        setStatus('Stopped.');
        if (answerNode) linkifyAnswer();
      } else {
        fail(e.message || String(e));
      }
    } finally {
      controller = null;
      setBusy(false);
    }
  }

  // ---- search only ---------------------------------------------------------
  async function searchOnly() {
    const query = els.question.value.trim();
    if (!query || controller) return;
    clearError();
    document.body.dataset.search = 'searching';
    setStatus('Searching…');
    els.hits.replaceChildren();
    els.hitsSection.hidden = false;
    try {
      const res = await api('/v1/search', { method: 'POST', body: { query, mode: els.mode.value, k: 5 } });
      const j = await res.json();
      const hits = Array.isArray(j.hits) ? j.hits : [];
      for (const h of hits) {
        const li = el('li', 'hit');
        const b = el('button', 'hit-link', label(h));
        b.type = 'button';
        b.addEventListener('click', () => openPassage(h));
        li.append(b);
        if (typeof h.score === 'number') li.append(el('span', 'score', h.score.toFixed(3)));
        if (h.heading) li.append(el('div', 'heading', h.heading));
        const t = String(h.text || '');
        li.append(el('p', 'snippet', t.length > 280 ? t.slice(0, 280) + '…' : t));
        els.hits.append(li);
      }
      if (!hits.length) els.hits.append(el('li', 'empty', 'No hits.'));
      const warnings = Array.isArray(j.warnings) ? j.warnings : [];
      for (const w of warnings) els.hits.append(el('li', 'warning', w));
      setStatus(`${hits.length} hit${hits.length === 1 ? '' : 's'} (${j.mode || els.mode.value}).`);
      document.body.dataset.search = 'done';
    } catch (e) {
      showError(e.message || String(e));
      setStatus('Error.');
      document.body.dataset.search = 'error';
    }
  }

  // ---- adapters ------------------------------------------------------------
  async function loadAdapters() {
    try {
      const res = await api('/v1/adapters');
      const j = await res.json();
      const chosen = els.adapter.value;
      els.adapter.replaceChildren(el('option', null, 'base model'));
      els.adapter.firstChild.value = '';
      for (const a of (j.adapters || [])) {
        if (!a.loaded) continue;
        const o = el('option', null, a.name);
        o.value = a.name;
        els.adapter.append(o);
      }
      els.adapter.value = [...els.adapter.options].some((o) => o.value === chosen) ? chosen : '';
    } catch (e) {
      if (e.status !== 401) setStatus(`Could not list adapters: ${e.message}`);
    }
  }

  // ---- wiring --------------------------------------------------------------
  els.askform.addEventListener('submit', (ev) => { ev.preventDefault(); ask(); });
  els.newchat.addEventListener('click', () => {
    conversation = [];
    els.newchat.hidden = true;
    showRewritten('');
    els.question.focus();
  });
  els.question.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      els.askform.requestSubmit();
    }
  });
  els.search.addEventListener('click', searchOnly);
  els.stop.addEventListener('click', () => { if (controller) controller.abort(); });
  loadAdapters();
})();
