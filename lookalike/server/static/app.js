// lookalike's page: search by picture, browse the collection, see what is indexed.
// Plain JavaScript, no build step, no external URLs; talks to the JSON API of the same server.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const state = { info: null, page: 1, pages: 1, last: null, objectUrl: null, seq: 0 };

  // ------------------------------------------------------------------------------------ helpers
  async function api(url, options) {
    const res = await fetch(url, Object.assign({ credentials: 'same-origin', headers: { Accept: 'application/json' } }, options || {}));
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      throw new Error(body && body.error ? body.error : `the server answered ${res.status} ${res.statusText}`);
    }
    return body;
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(([key, value]) => {
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('data-')) node.setAttribute(key, value);
      else node[key] = value;
    });
    (children || []).forEach((child) => node.appendChild(child));
    return node;
  }

  function showMessage(text, kind) {
    const box = $('message');
    box.textContent = text;
    box.className = `message ${kind || 'error'}`;
    box.hidden = !text;
  }

  function setBusy(busy) {
    document.body.classList.toggle('busy', busy);
    $('drop').setAttribute('aria-busy', busy ? 'true' : 'false');
  }

  function bytes(n) {
    if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1).replace(/\.0$/, '')} MB`;
    if (n >= 1024) return `${Math.round(n / 1024)} KB`;
    return `${n} bytes`;
  }

  function formatScore(score, metric) {
    if (score === null || score === undefined) return '';
    return metric === 'cosine' ? score.toFixed(3) : score.toPrecision(3);
  }

  function thumbImage(src, alt) {
    const img = el('img', { src, alt, loading: 'lazy', decoding: 'async', width: 160, height: 160 });
    img.addEventListener('load', () => {
      if (img.naturalWidth && img.naturalWidth < 48) img.classList.add('pixelated');
    });
    return img;
  }

  function options() {
    const kInput = $('k');
    let k = parseInt(kInput.value, 10);
    if (!Number.isFinite(k)) k = state.info ? state.info.default_k : 12;
    return { k, metric: $('metric').value };
  }

  // --------------------------------------------------------------------------------------- tabs
  function showView(name) {
    ['search', 'browse', 'info'].forEach((view) => {
      $(`view-${view}`).hidden = view !== name;
      $(`tab-${view}`).setAttribute('aria-selected', view === name ? 'true' : 'false');
    });
    if (name === 'browse' && !$('collection').children.length) loadPage(state.page);
  }

  // ------------------------------------------------------------------------------------- search
  async function searchFile(file) {
    if (!file) return;
    if (state.info && file.size > state.info.max_upload_bytes) {
      showMessage(`${file.name || 'That picture'} is ${bytes(file.size)}; the upload limit is ${bytes(state.info.max_upload_bytes)}.`);
      return;
    }
    state.last = { kind: 'file', file };
    const { k, metric } = options();
    const form = new FormData();
    form.append('image', file, file.name || 'pasted-image');
    form.append('k', String(k));
    form.append('metric', metric);
    await run(() => api('/api/search', { method: 'POST', body: form }), (data) => {
      if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
      state.objectUrl = URL.createObjectURL(file);
      const q = data.query;
      const what = [file.name || 'pasted picture', q.format, q.width && `${q.width}×${q.height}`].filter(Boolean).join(' · ');
      render(data, state.objectUrl, `Your picture: ${what}`);
    });
  }

  async function searchId(id) {
    state.last = { kind: 'id', id };
    const { k, metric } = options();
    const url = `/api/search?id=${encodeURIComponent(id)}&k=${k}&metric=${encodeURIComponent(metric)}&exclude_self=true`;
    await run(() => api(url), (data) => {
      const q = data.query;
      render(data, q.thumbnail, `Indexed image #${q.id}: ${q.path}`);
      if (location.hash !== `#id=${id}`) history.replaceState(null, '', `#id=${id}`);
    });
  }

  async function run(request, onData) {
    const seq = ++state.seq;
    showView('search');
    showMessage('');
    setBusy(true);
    try {
      const data = await request();
      if (seq !== state.seq) return; // a newer search has started
      onData(data);
      if (data.notice) showMessage(data.notice, 'notice');
    } catch (err) {
      if (seq === state.seq) showMessage(err.message);
    } finally {
      if (seq === state.seq) setBusy(false);
    }
  }

  function render(data, querySrc, caption) {
    const img = $('query-img');
    img.classList.remove('pixelated');
    img.src = querySrc;
    img.onload = () => { if (img.naturalWidth && img.naturalWidth < 48) img.classList.add('pixelated'); };
    $('query-caption').textContent = caption;
    const n = data.hits.length;
    $('summary').textContent = `${n} most similar image${n === 1 ? '' : 's'} by ${data.score}, in ${data.took_ms} ms`;
    const list = $('hits');
    list.replaceChildren(...data.hits.map((hit) => {
      const button = el('button', { type: 'button', class: 'hit', title: `${hit.path}\nclick to search by this image`, 'data-id': String(hit.id) }, [
        thumbImage(hit.thumbnail, hit.path),
        el('span', { class: 'meta' }, [
          el('span', { class: 'rank', text: `#${hit.rank}` }),
          el('span', { class: 'score', text: formatScore(hit.score, data.metric) }),
        ]),
        el('span', { class: 'label', text: hit.label || hit.path.split('/').pop() }),
      ]);
      button.addEventListener('click', () => searchId(hit.id));
      return el('li', {}, [button]);
    }));
    $('results').hidden = false;
  }

  function rerun() {
    if (!state.last) return;
    if (state.last.kind === 'file') searchFile(state.last.file);
    else searchId(state.last.id);
  }

  // ------------------------------------------------------------------------------------- browse
  async function loadPage(page) {
    try {
      const data = await api(`/api/images?page=${page}`);
      state.page = data.page;
      state.pages = data.pages;
      $('page-label').textContent = `page ${data.page} of ${data.pages} · ${data.total.toLocaleString()} images`;
      $('prev').disabled = data.page <= 1;
      $('next').disabled = data.page >= data.pages;
      $('collection').replaceChildren(...data.images.map((image) => {
        const button = el('button', { type: 'button', class: 'hit', title: `${image.path}\nclick to search by this image`, 'data-id': String(image.id) }, [
          thumbImage(image.thumbnail, image.path),
          el('span', { class: 'label', text: image.label ? `${image.label} · #${image.id}` : `#${image.id}` }),
        ]);
        button.addEventListener('click', () => searchId(image.id));
        return el('li', {}, [button]);
      }));
    } catch (err) {
      showView('search');
      showMessage(err.message);
    }
  }

  // --------------------------------------------------------------------------------------- info
  async function loadInfo() {
    try {
      const info = await api('/api/info');
      state.info = info;
      const k = $('k');
      k.max = String(info.max_k);
      if (!k.dataset.touched) k.value = String(info.default_k);
      const when = info.indexed_at ? new Date(info.indexed_at) : null;
      const whenText = when && !Number.isNaN(when.getTime()) ? when.toLocaleString() : (info.indexed_at || 'unknown');
      const loaded = info.loaded_at ? new Date(info.loaded_at) : null;
      const loadedText = loaded && !Number.isNaN(loaded.getTime()) ? `${loaded.toLocaleString()} (reloaded when the index changes)` : (info.loaded_at || 'unknown');
      $('status').textContent = `${info.images.toLocaleString()} images of “${info.folder}” · ${info.model.preset} model · indexed ${whenText}`;
      const rows = [
        ['Images', info.images.toLocaleString()],
        ['Labels (sub-folders)', info.labels.toLocaleString()],
        ['Folder', info.folder],
        ['Extractor', info.extractor],
        ['Model', `${info.model.preset} · ${info.model.fingerprint}`],
        ['Precision', info.model.precision || 'fp32'],
        ['Indexed', whenText],
        ['Loaded by the server', loadedText],
        ['Skipped when indexing', `${info.skipped} unreadable file${info.skipped === 1 ? '' : 's'}`],
        ['Upload limit', bytes(info.max_upload_bytes)],
        ['Results', `${info.default_k} by default, at most ${info.max_k}`],
        ['Versions', `index built by lookalike ${info.index_version}, served by ${info.server_version}`],
      ];
      $('info-list').replaceChildren(...rows.flatMap(([term, value]) => [el('dt', { text: term }), el('dd', { text: String(value) })]));
    } catch (err) {
      showMessage(err.message);
    }
  }

  // -------------------------------------------------------------------------------------- input
  function wire() {
    const drop = $('drop');
    const input = $('file');
    input.addEventListener('change', () => { if (input.files && input.files[0]) searchFile(input.files[0]); input.value = ''; });
    drop.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); input.click(); }
    });
    ['dragenter', 'dragover'].forEach((type) => drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add('over');
    }));
    ['dragleave', 'drop'].forEach((type) => drop.addEventListener(type, () => drop.classList.remove('over')));
    drop.addEventListener('drop', (event) => {
      event.preventDefault();
      const dt = event.dataTransfer;
      if (dt.files && dt.files.length) { searchFile(dt.files[0]); return; }
      const uri = dt.getData('text/uri-list') || dt.getData('text/plain') || '';
      const match = uri.match(/\/thumbs\/(\d+)/); // a thumbnail dragged from this page
      let sameOrigin = false;
      try { sameOrigin = new URL(uri, location.href).origin === location.origin; } catch (e) { sameOrigin = false; }
      if (match && sameOrigin) searchId(Number(match[1]));
      else showMessage('Drop an image file (from your computer) or one of the thumbnails on this page.');
    });
    document.addEventListener('paste', (event) => {
      const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
      const item = items.find((it) => it.kind === 'file' && it.type.startsWith('image/'));
      if (item) { event.preventDefault(); searchFile(item.getAsFile()); }
    });
    $('k').addEventListener('change', () => { $('k').dataset.touched = '1'; rerun(); });
    $('metric').addEventListener('change', rerun);
    $('search-form').addEventListener('submit', (event) => { event.preventDefault(); rerun(); });
    ['search', 'browse', 'info'].forEach((view) => $(`tab-${view}`).addEventListener('click', () => {
      history.replaceState(null, '', view === 'search' ? location.pathname : `#${view}`);
      showView(view);
    }));
    $('to-browse').addEventListener('click', (event) => { event.preventDefault(); $('tab-browse').click(); });
    $('prev').addEventListener('click', () => loadPage(state.page - 1));
    $('next').addEventListener('click', () => loadPage(state.page + 1));
  }

  function fromHash() {
    const hash = location.hash.slice(1);
    const match = hash.match(/^id=(\d+)$/);
    if (match) searchId(Number(match[1]));
    else if (hash === 'browse' || hash === 'info') showView(hash);
  }

  document.addEventListener('DOMContentLoaded', async () => {
    wire();
    await loadInfo();
    fromHash();
  });
})();
