const T = {
  ja: {login:"ログイン", logout:"ログアウト", prio:"優先度", state:"状態", site:"場所", cond:"事象", value:"値", raised:"発生", ack:"確認", shelve:"保留",
       disconnected:"サーバーとの接続が切れています。再接続中…", none:"発報中の警報はありません", count:"件の警報",
       states:{unack_active:"未確認・発生中", ack_active:"確認済・発生中", unack_rtn:"未確認・復旧", shelved:"保留中", suppressed:"抑制中", out_of_service:"休止中", normal:"正常"},
       prios:{critical:"最重要", high:"重要", medium:"中", low:"低"}, late:"遅延データ（要確認）", comment:"コメント（任意）", minutes:"保留時間（分）", reason:"理由",
       mute:"🔔 音あり", muted:"🔕 消音", detail_value:"値", detail_limit:"設定値", detail_raised:"発生（事象時刻）", detail_detected:"検知", detail_cleared:"復旧", detail_acked:"確認",
       tab_journal:"履歴", at:"日時", cancel:"取消", notified:"通知先", oncall:"当番", deliv:{sent:"✓ 送信済", pending:"… 送信待ち", failed:"✕ 失敗", held:"保留（まとめて送信）", summarized:"まとめて送信済"}, ack_title:"警報を確認", shelve_title:"警報を保留", reason_required:"理由を入力してください",
       all_prio:"全優先度", zoom_hint:"ドラッグで拡大", zoom_reset:"拡大解除", year:"1年", res:{raw:"生データ", "1m":"1分集計", "1h":"1時間集計（平均と最小–最大）"}, action:"操作", who:"担当", why:"理由", show:"表示",
       tab_analysis:"分析", kpi_title:"警報管理指標（過去24時間）", replay_title:"再生（リプレイ）", from:"開始", to:"終了", candidate:"候補ルール（任意）", replay_start:"再生開始",
       rp_running:"再生中", rp_done:"完了", rp_failed:"失敗", rp_report:"レポートを開く", rp_alarms:"警報", rp_diff:"差分：追加 {a}・削除 {r}・変更 {c}",
       k:{annunciations:"発報数", per_hour_mean:"1時間平均", per_hour_peak:"1時間最大", per_10min_peak:"10分最大", flood_periods:"警報洪水（10分10件超）", time_in_flood_pct:"洪水時間率 %", chattering:"チャタリング", stale:"長期発報（24時間超）", bad_actors_share_pct:"上位10件の割合 %", ack_median_s:"確認までの中央値（秒）", pages_per_night_max:"一晩の最多通知"},
       tab_alarms:"警報", tab_sites:"場所一覧", search:"場所・名称で検索", all:"すべて", st_alarm:"警報", st_comm_loss:"通信途絶", st_oos:"休止", st_ok:"正常",
       sts:{ok:"● 正常", alarm:"▲ 警報", comm_loss:"✕ 通信途絶", out_of_service:"■ 休止"}, level:"水位", flow:"流量", pressure:"圧力", running:"運転"},
  en: {login:"Log in", logout:"Log out", prio:"Priority", state:"State", site:"Site", cond:"Condition", value:"Value", raised:"Raised", ack:"Ack", shelve:"Shelve",
       disconnected:"Disconnected from the server. Reconnecting…", none:"No alarms need attention", count:" alarms",
       states:{unack_active:"UNACK ACTIVE", ack_active:"ACK ACTIVE", unack_rtn:"UNACK RTN", shelved:"SHELVED", suppressed:"SUPPRESSED", out_of_service:"OUT OF SERVICE", normal:"NORMAL"},
       prios:{critical:"CRITICAL", high:"HIGH", medium:"MEDIUM", low:"LOW"}, late:"late data (review)", comment:"Comment (optional)", minutes:"Shelve for (minutes)", reason:"Reason",
       mute:"🔔 Sound on", muted:"🔕 Muted", detail_value:"Value", detail_limit:"Limit", detail_raised:"Raised (event time)", detail_detected:"Detected", detail_cleared:"Cleared", detail_acked:"Acknowledged",
       tab_journal:"Journal", at:"When", cancel:"Cancel", notified:"Notified", oncall:"On call", deliv:{sent:"✓ delivered", pending:"… pending", failed:"✕ failed", held:"held (rate limit)", summarized:"sent in a summary"}, ack_title:"Acknowledge alarm", shelve_title:"Shelve alarm", reason_required:"A reason is required",
       all_prio:"All priorities", zoom_hint:"drag to zoom", zoom_reset:"Reset zoom", year:"1 y", res:{raw:"raw readings", "1m":"1-minute rollups", "1h":"hourly rollups (mean, min–max band)"}, action:"Action", who:"Who", why:"Why", show:"Show",
       tab_analysis:"Analysis", kpi_title:"Alarm-management KPIs (last 24 h)", replay_title:"Replay", from:"From", to:"To", candidate:"Candidate rules (optional)", replay_start:"Start replay",
       rp_running:"running", rp_done:"done", rp_failed:"failed", rp_report:"Open the report", rp_alarms:"alarms", rp_diff:"difference: {a} added, {r} removed, {c} moved",
       k:{annunciations:"Annunciations", per_hour_mean:"Per hour, mean", per_hour_peak:"Per hour, peak", per_10min_peak:"Per 10 minutes, peak", flood_periods:"Flood periods (> 10 in 10 min)", time_in_flood_pct:"Time in flood %", chattering:"Chattering alarms", stale:"Stale (active > 24 h)", bad_actors_share_pct:"Top 10 share %", ack_median_s:"Time to ack, median (s)", pages_per_night_max:"Most pages in a night"},
       tab_alarms:"Alarms", tab_sites:"Sites", search:"Search site or name", all:"All", st_alarm:"Alarm", st_comm_loss:"Comm loss", st_oos:"Out of service", st_ok:"OK",
       sts:{ok:"● OK", alarm:"▲ ALARM", comm_loss:"✕ COMM LOSS", out_of_service:"■ OUT OF SERVICE"}, level:"level", flow:"flow", pressure:"pressure", running:"running"},
};
let muted = localStorage.getItem("muted") === "1", audio = null;
let lang = localStorage.getItem("lang") || "ja", csrf = null, alarms = new Map(), es = null, role = null;
const $ = (id) => document.getElementById(id);
const PR = {critical:0, high:1, medium:2, low:3};
const SHOW = new Set(["unack_active","ack_active","unack_rtn"]);
function t(k) { return T[lang][k]; }
function applyLang() {
  document.documentElement.lang = lang; $("lang").value = lang;
  document.querySelectorAll("[data-t]").forEach(e => e.textContent = t(e.dataset.t));
  document.querySelectorAll("[data-tp]").forEach(e => e.placeholder = t(e.dataset.tp));
  document.querySelectorAll("[data-prio]").forEach(e => e.textContent = t("prios")[e.value]);
  renderSites();
  $("logout").textContent = t("logout"); $("mute").textContent = muted ? t("muted") : t("mute"); render();
}
async function api(path, opts = {}) {
  opts.headers = Object.assign({"content-type": "application/json"}, opts.headers || {});
  if (csrf) opts.headers["x-csrf-token"] = csrf;
  opts.credentials = "same-origin";
  const r = await fetch(path, opts);
  if (!r.ok) throw new Error((await r.json().catch(() => ({error: r.statusText}))).error);
  return r.json();
}
// A time in the board's language, in the browser's time zone; "–" for none.
function when(x) { return x ? new Date(x).toLocaleString(lang === "ja" ? "ja-JP" : "en-GB") : "–"; }
function esc(s) { return String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c])); }
function render() {
  const list = [...alarms.values()].filter(a => SHOW.has(a.state))
    .sort((a, b) => PR[a.priority] - PR[b.priority] || b.detected_at.localeCompare(a.detected_at));
  $("summary").textContent = list.length ? list.length + t("count") : t("none");
  const canAct = role && role !== "viewer";
  $("rows").innerHTML = list.map(a => `<tr class="${a.state.startsWith("unack") ? "unack" : ""}" data-id="${esc(a.id)}">
    <td><span class="prio ${esc(a.priority)}">${esc(t("prios")[a.priority])}</span></td>
    <td class="state">${esc(t("states")[a.state] || a.state)}</td>
    <td>${esc(a.site)}</td>
    <td>${esc(lang === "ja" ? a.message_ja : a.message)} ${a.late ? `<span class="late">${esc(t("late"))}</span>` : ""}</td>
    <td class="hide-narrow">${a.value ?? ""}</td>
    <td>${esc(when(a.raised_at))}</td>
    <td>${canAct && !a.acked ? `<button data-act="ack">${esc(t("ack"))}</button>` : ""}
        ${canAct ? `<button data-act="shelve">${esc(t("shelve"))}</button>` : ""}</td></tr>`).join("");
}
// A short two-tone chime for a new critical or high alarm, unless muted.
function chime() {
  if (muted) return;
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    [880, 660].forEach((f, i) => {
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = f; g.gain.value = 0.15;
      o.connect(g); g.connect(audio.destination);
      o.start(audio.currentTime + i * 0.25); o.stop(audio.currentTime + i * 0.25 + 0.2);
    });
  } catch {}
}
$("mute").addEventListener("click", () => {
  muted = !muted; localStorage.setItem("muted", muted ? "1" : "0");
  $("mute").setAttribute("aria-pressed", String(muted)); applyLang();
});
async function showDetail(id) {
  const a = alarms.get(id); if (!a) return;
  let journal = [];
  try { journal = await api(`/api/v1/alarms/${encodeURIComponent(id)}/journal`); } catch {}
  let told = [];
  try { told = await api(`/api/v1/alarms/${encodeURIComponent(id)}/notifications`); } catch {}
  $("detail-body").innerHTML = `<h3>${esc(a.site)} · ${esc(lang === "ja" ? a.message_ja : a.message)}</h3>
    <table><tr><td>${esc(t("detail_value"))}</td><td>${a.value ?? "–"}</td><td>${esc(t("detail_limit"))}</td><td>${a.limit ?? "–"}</td></tr>
    <tr><td>${esc(t("detail_raised"))}</td><td>${esc(when(a.raised_at))}</td><td>${esc(t("detail_detected"))}</td><td>${esc(when(a.detected_at))}</td></tr>
    <tr><td>${esc(t("detail_cleared"))}</td><td>${esc(when(a.cleared_at))}</td><td>${esc(t("detail_acked"))}</td><td>${esc(when(a.acked_at))} ${esc(a.acked_by || "")}</td></tr></table>
    <table class="journal">${journal.map(r => `<tr><td>${esc(when(r.at))}</td><td>${esc(r.action)}</td><td>${esc(t("states")[r.to] || r.to)}</td><td>${esc(r.who)}</td><td>${esc(r.why || "")}</td></tr>`).join("")}</table>
    ${told.length ? `<h4>${esc(t("notified"))}</h4><table class="notified">${told.map(n => `<tr class="${esc(n.state)}"><td>${esc(when(n.created_at))}</td><td>${esc(n.person)}</td><td>${esc(n.type)}${n.level ? " L" + n.level : ""}</td><td>${esc(n.channel)}</td>
      <td>${esc(t("deliv")[n.state] || n.state)}${n.attempts > 1 ? " ×" + n.attempts : ""}</td><td class="mute">${esc(n.last_error || "")}</td></tr>`).join("")}</table>` : ""}`;
  $("detail").hidden = false;
}
$("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
$("rows").addEventListener("click", async (e) => {
  const act = e.target.dataset.act;
  if (!act) { const tr = e.target.closest("tr[data-id]"); if (tr) showDetail(tr.dataset.id); return; }
  openAction(act, e.target.closest("tr").dataset.id);
});
// Acknowledge (optional comment) and shelve (duration and a required reason)
// in one dialog, so the operator sees which alarm they act on.
let pending = null;
function openAction(act, id) {
  const a = alarms.get(id); if (!a) return;
  pending = {act, id};
  $("act-title").textContent = t(act === "ack" ? "ack_title" : "shelve_title");
  $("act-what").textContent = `${a.site} · ${lang === "ja" ? a.message_ja : a.message}`;
  $("act-minutes-row").hidden = act !== "shelve";
  $("act-text-label").textContent = t(act === "ack" ? "comment" : "reason");
  $("act-ok").textContent = t(act);
  $("act-text").value = ""; $("act-err").textContent = "";
  $("act-dialog").showModal(); $("act-text").focus();
}
$("act-cancel").addEventListener("click", () => { pending = null; $("act-dialog").close(); });
$("act-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!pending) return;
  const {act, id} = pending, text = $("act-text").value.trim();
  try {
    if (act === "ack") {
      alarms.set(id, await api(`/api/v1/alarms/${encodeURIComponent(id)}/ack`, {method:"POST", body: JSON.stringify({comment: text})}));
    } else {
      if (!text) { $("act-err").textContent = t("reason_required"); return; }
      const minutes = parseInt($("act-minutes").value, 10);
      alarms.set(id, await api(`/api/v1/alarms/${encodeURIComponent(id)}/shelve`, {method:"POST", body: JSON.stringify({minutes, reason: text})}));
    }
    pending = null; $("act-dialog").close(); render();
  } catch (err) { $("act-err").textContent = err.message; }
});
let sites = [];
function fmt(v, d) { return v && v.value != null ? Number(v.value).toFixed(d) : "–"; }
function renderSites() {
  const q = ($("site-search").value || "").toLowerCase(), f = $("site-filter").value;
  const byArea = new Map();
  for (const s of sites) {
    if (f && s.status !== f) continue;
    if (q && !(s.id.toLowerCase().includes(q) || s.name.toLowerCase().includes(q) || (s.name_en || "").toLowerCase().includes(q))) continue;
    if (!byArea.has(s.area)) byArea.set(s.area, []);
    byArea.get(s.area).push(s);
  }
  $("areas").innerHTML = [...byArea].map(([area, list]) => `<div class="area"><h3>${esc(area)} (${list.length})</h3><div class="grid">` +
    list.map(s => {
      const v = s.values || {};
      const vals = s.kind === "dma"
        ? `${t("flow")} ${fmt(v.q, 1)} m³/h · ${t("pressure")} ${fmt(v.p, 3)} MPa`
        : `${t("level")} ${fmt(v.level, 0)} cm · ${t("running")} ${[v.p1_run && v.p1_run.value ? "P1" : "", v.p2_run && v.p2_run.value ? "P2" : ""].filter(Boolean).join(" ") || "–"}`;
      return `<div class="tile ${esc(s.status)}" data-site="${esc(s.id)}"><div><b>${esc(s.id)}</b> <span class="st">${esc(t("sts")[s.status] || s.status)}</span></div>
        <div>${esc(lang === "ja" ? s.name : (s.name_en || s.name))}</div><div class="vals">${esc(vals)}</div></div>`;
    }).join("") + `</div></div>`).join("");
}
// Site detail: trends of the site's key points over 24 h, 7 d, 30 d or a year
// as inline SVG, alarm markers on the time axis, and the latest raw message.
// Spans of 7 days and more read the hourly rollups (mean as the line, the
// min–max envelope as a band), 2 to 7 days the 1-minute rollups, shorter
// ones the raw readings. Drag across a trend to zoom into that span
// (fetched again at the resolution the new span calls for); "reset zoom"
// goes back to the chosen range.
function resolutionFor(spanMs) {
  const d = spanMs / 86400e3;
  return d >= 7 ? "1h" : d > 2 ? "1m" : "raw";
}
async function showSite(id, zoom) {
  const s = sites.find((x) => x.id === id); if (!s) return;
  const range = $("trend-range") ? $("trend-range").value : "24";
  // Anchored at the site's latest data, so a station that went quiet still
  // shows the day before it did.
  let to = s.last_seen ? new Date(s.last_seen) : new Date(), from = new Date(to - Number(range) * 3600e3);
  if (zoom) { from = zoom.from; to = zoom.to; }
  const pts = s.kind === "dma" ? [["q", "m³/h"], ["p", "MPa"]] : [["level", "cm"], ["p1_run", ""], ["p2_run", ""]];
  const res = resolutionFor(to - from);
  const q = `from=${from.toISOString()}&to=${to.toISOString()}&limit=20000&resolution=${res}`;
  const detail = await api(`/api/v1/sites/${encodeURIComponent(id)}`);
  const journal = await api(`/api/v1/journal?site=${encodeURIComponent(id)}&from=${from.toISOString()}&limit=500`);
  const marks = journal.filter((r) => r.action === "raise").map((r) => new Date(r.event_time || r.at));
  const W = 900, H = 120;
  const charts = [];
  for (const [p, unit] of pts) {
    const rows = await api(`/api/v1/points/${encodeURIComponent(id + "." + p)}/readings?${q}`);
    const vals = rows.filter((r) => r.value != null);
    if (!vals.length) { charts.push(`<div class="trend"><b>${esc(p)}</b> –</div>`); continue; }
    // Rollup rows carry min and max beside the mean.
    const lows = vals.map((r) => r.min ?? r.value), highs = vals.map((r) => r.max ?? r.value);
    let lo = lows[0], hi = highs[0];
    for (let i = 1; i < vals.length; i++) { lo = Math.min(lo, lows[i]); hi = Math.max(hi, highs[i]); }
    const x = (t) => ((new Date(t) - from) / (to - from)) * W;
    const y = (v) => H - 4 - ((v - lo) / ((hi - lo) || 1)) * (H - 8);
    // A bucket covers its whole width: rollups are drawn as steps from the
    // bucket's start to its end, raw readings as a line through them.
    const width = {raw: 0, "1m": 60e3, "1h": 3600e3}[res];
    const steps = (v) => vals.flatMap((r, i) => {
      const t0 = new Date(r.t);
      return width ? [[x(t0), y(v[i])], [x(+t0 + width), y(v[i])]] : [[x(t0), y(v[i])]];
    });
    const d = (ps) => ps.map(([a, b], i) => `${i ? "L" : "M"}${a.toFixed(1)},${b.toFixed(1)}`).join("");
    const path = d(steps(vals.map((r) => r.value)));
    const band = width ? `<path class="band" d="${d([...steps(highs), ...steps(lows).reverse()])}Z"/>` : "";
    const m = marks.map((t) => `<line class="mark" x1="${x(t)}" x2="${x(t)}" y1="0" y2="${H}"/>`).join("");
    charts.push(`<div class="trend"><b>${esc(p)}</b> <span class="mute">${lo.toFixed(2)}–${hi.toFixed(2)} ${esc(unit)} · ${esc(t("res")[res])}</span>
      <svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" data-point="${esc(p)}" data-resolution="${res}">${m}${band}<path class="line" d="${path}"/></svg></div>`);
  }
  const raw = detail.latest_raw ? `<pre class="raw">${esc(detail.latest_raw.message)}</pre>` : "";
  $("site-detail-body").innerHTML = `<h3>${esc(s.id)} · ${esc(lang === "ja" ? s.name : (s.name_en || s.name))}</h3>
    <select id="trend-range"><option value="24"${range === "24" ? " selected" : ""}>24 h</option><option value="168"${range === "168" ? " selected" : ""}>7 d</option><option value="720"${range === "720" ? " selected" : ""}>30 d</option><option value="8760"${range === "8760" ? " selected" : ""}>${esc(t("year"))}</option></select>
    <span id="trend-span" data-from="${from.toISOString()}" data-to="${to.toISOString()}">${esc(when(from))} – ${esc(when(to))}</span>
    ${zoom ? `<button id="zoom-reset">${esc(t("zoom_reset"))}</button>` : `<span class="mute">${esc(t("zoom_hint"))}</span>`}
    ${charts.join("")}${raw}`;
  $("trend-range").addEventListener("change", () => showSite(id));
  if (zoom) $("zoom-reset").addEventListener("click", () => showSite(id));
  document.querySelectorAll("#site-detail-body .trend svg").forEach((svg) => {
    let x0 = null, sel = null;
    const frac = (e) => { const r = svg.getBoundingClientRect(); return Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)); };
    svg.addEventListener("pointerdown", (e) => {
      x0 = frac(e); svg.setPointerCapture(e.pointerId);
      sel = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      sel.setAttribute("class", "sel"); sel.setAttribute("y", 0); sel.setAttribute("height", H); svg.appendChild(sel);
    });
    svg.addEventListener("pointermove", (e) => {
      if (x0 === null) return;
      const x1 = frac(e);
      sel.setAttribute("x", Math.min(x0, x1) * W); sel.setAttribute("width", Math.abs(x1 - x0) * W);
    });
    svg.addEventListener("pointerup", (e) => {
      if (x0 === null) return;
      const a = Math.min(x0, frac(e)), b = Math.max(x0, frac(e)); x0 = null; sel.remove();
      if (b - a < 0.01) return; // a click, not a drag
      const span = to - from;
      showSite(id, {from: new Date(+from + a * span), to: new Date(+from + b * span)});
    });
  });
  $("site-detail").hidden = false;
}

$("site-detail-close").addEventListener("click", () => { $("site-detail").hidden = true; });
$("areas").addEventListener("click", (e) => { const tile = e.target.closest(".tile[data-site]"); if (tile) showSite(tile.dataset.site); });
async function loadSites() { try { sites = await api("/api/v1/sites"); renderSites(); } catch {} }
document.querySelectorAll("#tabs button").forEach(b => b.addEventListener("click", () => {
  document.querySelectorAll("#tabs button").forEach(x => x.classList.toggle("on", x === b));
  $("alarms-view").hidden = b.dataset.tab !== "alarms";
  $("sites-view").hidden = b.dataset.tab !== "sites";
  $("journal-view").hidden = b.dataset.tab !== "journal";
  $("analysis-view").hidden = b.dataset.tab !== "analysis";
  if (b.dataset.tab === "analysis") loadKpis();
  if (b.dataset.tab === "sites") loadSites();
  if (b.dataset.tab === "journal") loadJournal();
}));
function journalQuery() {
  const p = new URLSearchParams({limit: "1000"});
  if ($("j-site").value) p.set("site", $("j-site").value.trim());
  if ($("j-cond").value) p.set("condition", $("j-cond").value.trim());
  if ($("j-prio").value) p.set("priority", $("j-prio").value);
  if ($("j-from").value) p.set("from", new Date($("j-from").value).toISOString());
  if ($("j-to").value) p.set("to", new Date($("j-to").value).toISOString());
  return p;
}
async function loadJournal() {
  const p = journalQuery();
  const csv = new URLSearchParams(p); csv.set("format", "csv");
  $("j-csv").href = "/api/v1/journal?" + csv;
  try {
    const rows = await api("/api/v1/journal?" + p);
    $("jrows").innerHTML = rows.map(r => `<tr><td>${esc(when(r.at))}</td><td>${esc(r.site)}</td>
      <td>${esc(r.condition)}</td><td>${r.priority ? `<span class="prio ${esc(r.priority)}">${esc(t("prios")[r.priority])}</span>` : ""}</td><td>${esc(r.action)}</td><td>${esc(t("states")[r.to] || r.to)}</td><td>${esc(r.who)}</td><td>${esc(r.why || "")}</td></tr>`).join("");
  } catch (err) { $("jrows").innerHTML = `<tr><td colspan="8">${esc(err.message)}</td></tr>`; }
}
async function loadKpis() {
  $("replay-panel").hidden = !(role === "engineer" || role === "admin");
  try {
    const k = await api("/api/v1/kpis");
    $("kpi-rows").innerHTML = Object.keys(t("k")).map(key => {
      const v = Array.isArray(k[key]) ? k[key].length : (k[key] ?? "–");
      return `<tr><th>${esc(t("k")[key])}</th><td data-kpi="${key}">${esc(v)}</td></tr>`;
    }).join("");
  } catch (err) { $("kpi-rows").innerHTML = `<tr><td>${esc(err.message)}</td></tr>`; }
}
function showReplay(r) {
  $("rp-progress").hidden = r.state !== "running"; $("rp-progress").value = r.progress;
  let s = `${esc(r.id)}: ${esc(t("rp_" + r.state))}`;
  if (r.state === "done" && r.summary) {
    s += " — " + (r.summary.runs || []).map(x => `${esc(x.name)} ${x.alarms} ${esc(t("rp_alarms"))}`).join(", ");
    if (r.summary.diff) s += " — " + esc(t("rp_diff").replace("{a}", r.summary.diff.added).replace("{r}", r.summary.diff.removed).replace("{c}", r.summary.diff.changed));
    s += ` <a id="rp-report" target="_blank" rel="noopener" href="/api/v1/replays/${encodeURIComponent(r.id)}/report">${esc(t("rp_report"))}</a>`;
  }
  if (r.state === "failed") s += " — " + esc(r.error || "");
  $("rp-status").innerHTML = s;
}
$("replay-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = {from: new Date($("rp-from").value).toISOString(), to: new Date($("rp-to").value).toISOString()};
  const f = $("rp-rules").files[0];
  if (f) body.candidate_rules = await f.text();
  try {
    let r = await api("/api/v1/replays", {method: "POST", body: JSON.stringify(body)});
    showReplay(r);
    while (r.state === "running") {
      await new Promise(ok => setTimeout(ok, 500));
      r = await api("/api/v1/replays/" + encodeURIComponent(r.id));
      showReplay(r);
    }
  } catch (err) { $("rp-status").textContent = err.message; }
});
$("jfilter").addEventListener("submit", (e) => { e.preventDefault(); loadJournal(); });
$("site-search").addEventListener("input", renderSites);
$("site-filter").addEventListener("change", renderSites);
setInterval(() => { if (!$("sites-view").hidden) loadSites(); }, 10000);
function connect() {
  if (es) es.close();
  es = new EventSource("/api/v1/events");
  es.addEventListener("snapshot", (e) => { alarms = new Map(JSON.parse(e.data).map(a => [a.id, a])); $("banner").classList.remove("show"); render(); });
  es.addEventListener("alarm", (e) => {
    const tr = JSON.parse(e.data); alarms.set(tr.alarm.id, tr.alarm); render();
    if (tr.action === "raise" && tr.notify && ["critical", "high"].includes(tr.alarm.priority)) chime();
    if (!$("sites-view").hidden) loadSites();
  });
  es.addEventListener("resync", () => connect());
  es.onerror = () => { $("banner").textContent = t("disconnected"); $("banner").classList.add("show"); };
}
// Who is on call now (when alerts are configured), refreshed every minute.
async function loadOncall() {
  try {
    const teams = await api("/api/v1/oncall");
    $("oncall").textContent = teams.length ? t("oncall") + ": " + teams.map(x => `${x.team} ${x.person || "–"}`).join(" · ") : "";
  } catch { $("oncall").textContent = ""; }
}
setInterval(() => { if (csrf) loadOncall(); }, 60000);
async function start() {
  try {
    const s = await api("/api/v1/session");
    csrf = s.csrf; role = s.role; $("who").textContent = `${s.user} (${s.role})`; $("title").textContent = s.service;
    $("login").classList.remove("show"); $("main").hidden = false; $("logout").hidden = false; $("mute").hidden = false;
    if (!localStorage.getItem("lang")) { lang = s.language; }
    applyLang(); connect(); loadOncall();
  } catch { $("login").classList.add("show"); $("main").hidden = true; }
}
$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { await api("/api/v1/login", {method:"POST", body: JSON.stringify({user: $("user").value, password: $("pass").value})}); start(); }
  catch (err) { $("loginerr").textContent = err.message; }
});
$("logout").addEventListener("click", async () => { await api("/api/v1/logout", {method:"POST"}).catch(() => {}); if (es) es.close(); location.reload(); });
$("lang").addEventListener("change", () => { lang = $("lang").value; localStorage.setItem("lang", lang); applyLang(); });
applyLang(); start();
