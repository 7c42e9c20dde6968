"""`scribeflow dashboard`: a live status page on 127.0.0.1.

The page is static; its script asks /status.json (status.snapshot) and /history.json
(the last day's disk samples and hourly transcriptions, from the ledger) every few
seconds and draws the disk gauge against the limits, throughput, ETA, failures and
pauses; /shows.json the hardest shows of the corpus's shows.tsv, and /search.json?q=WORD
a search of the corpus index (stages/concordance.py) for the page's search box (a page
opened with ?q=WORD searches at once). /metrics serves the figures in Prometheus' format.
It reads only: it may run beside the workflow for months, or be started and stopped at will.
"""

from __future__ import annotations

import html
import http.server
import json
import threading
import time

from scribeflow.config.layout import Layout
from scribeflow.config.settings import Settings
from scribeflow.state.ledger import LedgerReader, thin_peaks

HISTORY_SECONDS = 24 * 3600
HISTORY_POINTS = 300


SHOWN_SHOWS = 15


def hardest_shows(settings: Settings, n: int = SHOWN_SHOWS) -> dict:
    """The corpus step's shows.tsv, hardest first (its order): the first `n` and how many."""
    import csv

    path = Layout.from_config(settings).corpus_files()["shows"]
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except FileNotFoundError:
        return {"shows": [], "total": 0}
    keep = ("rank", "series", "season", "episodes", "difficulty", "chars_per_minute", "words_95")
    return {"shows": [{k: r.get(k) or None for k in keep} for r in rows[:n]], "total": len(rows)}


def search_corpus(settings: Settings, query: dict) -> dict:
    from scribeflow.stages.concordance import Index, search

    word = (query.get("q") or [""])[0].strip()
    if not word:
        return {"hits": [], "query": ""}
    series = (query.get("series") or [None])[0] or None
    with Index(Layout.from_config(settings).corpus_index, readonly=True) as index:
        return search(index, word, series=series, limit=20)


def history(settings: Settings, now: float | None = None) -> dict:
    """The last day's disk usage (thinned to HISTORY_POINTS, keeping each bucket's peak)
    and transcriptions per hour, from the ledger; empty before the first run."""
    now = now or time.time()
    since = now - HISTORY_SECONDS
    db = Layout.from_config(settings).ledger
    if not db.exists():
        return {"disk": [], "transcriptions_per_hour": []}
    with LedgerReader(db) as ledger:
        samples = [(at, used) for at, used, _ in ledger.disk_samples(since)]
        hours = ledger.transcriptions_per_hour(since)
    disk = thin_peaks(samples, HISTORY_POINTS)
    return {"disk": [[round(at), used] for at, used in disk],
            "transcriptions_per_hour": [[hour * 3600, n] for hour, n in hours]}


class _Handler(http.server.BaseHTTPRequestHandler):
    config: Settings
    reading: str  # the config files and data folder it reads (status.reading_lines)
    refresh_seconds: float
    cache: dict
    lock: threading.Lock

    def log_message(self, fmt, *args):  # the terminal shows the URL, not every request
        pass

    def _cached(self, key: str, make):
        with self.lock:
            at, value = self.cache.get(key, (0.0, None))
            if time.monotonic() - at > min(self.refresh_seconds, 5.0):
                value = make()
                self.cache[key] = (time.monotonic(), value)
            return value

    def do_GET(self):
        from scribeflow.ops.metrics import text
        from scribeflow.ops.status import snapshot

        from urllib.parse import parse_qs

        path, _, query = self.path.partition("?")
        try:
            if path == "/":
                body = PAGE.replace("__REFRESH_MS__", str(int(self.refresh_seconds * 1000)))
                body, ctype = body.replace("__READING__", html.escape(self.reading)), "text/html"
            elif path == "/status.json":
                body, ctype = json.dumps(self._cached("status", lambda: snapshot(self.config))), "application/json"
            elif path == "/history.json":
                body, ctype = json.dumps(self._cached("history", lambda: history(self.config))), "application/json"
            elif path == "/shows.json":
                body, ctype = json.dumps(self._cached("shows", lambda: hardest_shows(self.config))), "application/json"
            elif path == "/search.json":
                found = search_corpus(self.config, parse_qs(query))
                body, ctype = json.dumps(found, ensure_ascii=False), "application/json"
            elif path == "/metrics":
                body, ctype = self._cached("metrics", lambda: text(self.config)), "text/plain; version=0.0.4"
            else:
                self.send_error(404)
                return
        except Exception as exc:  # a locked or damaged ledger: say so on the page, keep serving
            body, ctype = json.dumps({"error": f"{type(exc).__name__}: {exc}"}), "application/json"
            self.send_response(503)
        else:
            self.send_response(200)
        data = body.encode()
        self.send_header("Content-Type", f"{ctype}; charset=utf-8" if "charset" not in ctype else ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


def server(config: Settings, port: int = 8787, address: str = "127.0.0.1",
           refresh_seconds: float = 10.0, reading: str = "") -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"config": config, "refresh_seconds": refresh_seconds, "reading": reading,
                                            "cache": {}, "lock": threading.Lock()})
    return http.server.ThreadingHTTPServer((address, port), handler)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>scribeflow</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
 h1{font-size:1.3em;margin:0 0 .2em} .muted{color:#777;font-size:.9em}
 .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1em;margin-top:1em}
 .card{border:1px solid #ddd;border-radius:8px;padding:.8em 1em}
 .card h2{font-size:1em;margin:0 0 .5em;color:#444}
 .big{font-size:1.6em;font-weight:600} .bad{color:#b00020} .ok{color:#0a7d32}
 table{border-collapse:collapse;width:100%;font-size:.9em} td{padding:2px 4px;border-bottom:1px solid #eee}
 svg text{font-size:11px;fill:#555}
</style></head><body>
<h1>scribeflow <span id="headline" class="muted">loading…</span></h1>
<div class="muted" id="reading">__READING__</div>
<div class="muted">Refreshed every __REFRESH_MS__ ms · <span id="updated">never</span> · <span id="error" class="bad"></span></div>
<div class="grid">
 <div class="card"><h2>Disk</h2><div id="disk-text" class="big">–</div><svg id="gauge" width="100%" height="54"></svg>
  <div id="disk-kinds" class="muted"></div><div id="paused"></div></div>
 <div class="card"><h2>ETA</h2><div id="eta" class="big">–</div><div id="eta-detail" class="muted"></div></div>
 <div class="card"><h2>Throughput</h2><div id="rates"></div><svg id="tph" width="100%" height="90"></svg></div>
 <div class="card"><h2>Disk, last 24 h</h2><svg id="history" width="100%" height="110"></svg></div>
 <div class="card"><h2>Stages</h2><table id="stages"></table></div>
 <div class="card"><h2>Failures</h2><div id="failures-summary"></div><table id="failures"></table></div>
 <div class="card"><h2>Pauses</h2><div id="pauses"></div><div id="hosts"></div></div>
 <div class="card"><h2>Shows by difficulty</h2><div id="shows-summary" class="muted"></div><table id="shows"></table></div>
 <div class="card"><h2>Search the corpus</h2><form id="search-form"><input id="q" name="q" placeholder="食べる"
   size="16"> <input id="series" name="series" placeholder="series (optional)" size="14"> <button>Search</button></form>
   <div id="search-summary" class="muted"></div><table id="hits"></table></div>
</div>
<script>
const $ = id => document.getElementById(id);
function size(b){const u=[["TB",1e12],["GB",1e9],["MB",1e6],["kB",1e3]];
  for(const [n,s] of u){if(Math.abs(b)>=s)return Number((b/s).toPrecision(3))+" "+n;} return b+" B";}
function span(s){if(s==null)return "unknown"; s=Math.round(s); const d=Math.floor(s/86400),h=Math.floor(s%86400/3600),m=Math.floor(s%3600/60);
  return d?`${d} d ${h} h`:h?`${h} h ${m} min`:`${m} min`;}
function esc(t){return String(t).replace(/[&<>]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;"}[c]));}
function gauge(d){const w=$("gauge").clientWidth||600, x=v=>8+(w-16)*Math.min(v,d.hard_limit*1.05)/(d.hard_limit*1.05);
  let s=`<rect x="8" y="8" width="${w-16}" height="18" fill="#eee"/>`+
        `<rect id="gauge-used" x="8" y="8" width="${x(d.total)-8}" height="18" fill="${d.total>=d.pause_threshold?'#e67e22':'#3b82f6'}"/>`;
  const marks=[["resume_threshold","#0a7d32","resume"],["pause_threshold","#e67e22","pause"],["hard_limit","#b00020","hard limit"]];
  for(const [k,c] of marks) s+=`<line x1="${x(d[k])}" x2="${x(d[k])}" y1="4" y2="30" stroke="${c}" stroke-width="2"/>`;
  s+=`<text x="8" y="46">${marks.map(([k,c,l])=>`<tspan fill="${c}">${l} ${size(d[k])}</tspan>`).join(" · ")}</text>`;
  $("gauge").innerHTML=s;}
function line(svg,pts,limits){const w=svg.clientWidth||600,h=svg.clientHeight||110; if(!pts.length){svg.innerHTML='<text x="8" y="20">no samples yet</text>';return;}
  const t0=pts[0][0],t1=pts[pts.length-1][0]||t0+1, top=Math.max(...pts.map(p=>p[1]))*1.2||1;
  const X=t=>8+(w-16)*(t-t0)/Math.max(1,t1-t0), Y=v=>h-14-(h-24)*v/top;
  let s=`<polyline fill="none" stroke="#3b82f6" stroke-width="1.5" points="${pts.map(p=>X(p[0])+","+Y(p[1])).join(" ")}"/>`
    +pts.slice(-1).map(p=>`<circle cx="${X(p[0])}" cy="${Y(p[1])}" r="3" fill="#3b82f6"/>`).join("");
  for(const [v,c] of limits) if(v<=top) s+=`<line x1="8" x2="${w-8}" y1="${Y(v)}" y2="${Y(v)}" stroke="${c}" stroke-dasharray="4"/>`;
  s+=`<text x="8" y="12">peak ${size(Math.max(...pts.map(p=>p[1])))}</text>`; svg.innerHTML=s;}
function bars(svg,pts){const w=svg.clientWidth||600,h=svg.clientHeight||90; if(!pts.length){svg.innerHTML='<text x="8" y="20">nothing transcribed in the last 24 h</text>';return;}
  const top=Math.max(...pts.map(p=>p[1])), bw=(w-16)/24, now=Date.now()/1000;
  svg.innerHTML=pts.map(p=>{const age=Math.floor((now-p[0])/3600), x=8+(23-Math.min(23,age))*bw, bh=(h-20)*p[1]/top;
    return `<rect x="${x}" y="${h-14-bh}" width="${bw-2}" height="${bh}" fill="#0a7d32"><title>${p[1]}</title></rect>`}).join("")+
    `<text x="8" y="${h-2}">transcriptions per hour, last 24 h (max ${top})</text>`;}
async function refresh(){
  try{
    const s=await (await fetch("status.json",{cache:"no-store"})).json();
    if(s.error) throw new Error(s.error);
    const h=await (await fetch("history.json",{cache:"no-store"})).json();
    const d=s.disk, st=s.stages, done=(st.transcribed||0)+(st.tokenized||0)+(st.analyzed||0), total=s.catalogue_episodes||0;
    $("headline").textContent=`${done.toLocaleString()} of ${total.toLocaleString()} episodes transcribed (${total?(100*done/total).toFixed(1):0}%)`
      +(s.run?(s.run.alive?" · run alive":" · no run alive"):"");
    $("disk-text").textContent=`${size(d.total)} of ${size(d.hard_limit)} (${d.percent_of_hard_limit}%)`;
    $("disk-kinds").textContent=["videos","partial","audio","transcripts","tokens","analysis","logs","db","other"]
      .filter(k=>d[k]).map(k=>`${k} ${size(d[k])}`).join(" · ");
    gauge(d);
    $("paused").innerHTML=s.pauses.open?'<span class="bad">downloads paused</span>':'<span class="ok">downloading</span>';
    const e=s.eta; $("eta").textContent=e.seconds==null?"no rate measured yet":e.seconds===0?"done":span(e.seconds);
    $("eta-detail").textContent=`${e.remaining_episodes.toLocaleString()} episodes left`+(e.rate_per_hour?` at ${e.rate_per_hour}/h (${e.basis})`:"")+(e.at?`, done ${e.at}`:"");
    const r=s.rates||{}, def=r.definitions||{}, cols=["this_run","last_hour","overall"];
    $("rates").innerHTML=`<table><tr><td>per hour</td>${cols.map(c=>`<td title="${esc(def[c]||"")}">${c.replace("_"," ")}</td>`).join("")}</tr>`
      +["downloads","extractions","transcriptions"].map(n=>`<tr><td>${n}</td>${cols.map(c=>`<td><b>${(r[n+"_per_hour"]||{})[c]??"–"}</b></td>`).join("")}</tr>`).join("")+"</table>";
    bars($("tph"),h.transcriptions_per_hour);
    line($("history"),h.disk,[[d.resume_threshold,"#0a7d32"],[d.pause_threshold,"#e67e22"],[d.hard_limit,"#b00020"]]);
    $("stages").innerHTML=Object.entries(st).map(([k,v])=>`<tr><td>${k}</td><td>${v.toLocaleString()}</td></tr>`).join("")
      +`<tr><td>not started</td><td>${(s.not_started||0).toLocaleString()}</td></tr>`;
    const f=s.failures, gave=f.filter(x=>x.given_up).length;
    $("failures-summary").innerHTML=f.length?`<span class="bad">${f.length} failed</span> (${gave} given up, ${f.length-gave} to be tried again)`:'<span class="ok">no failures</span>';
    $("failures").innerHTML=f.slice(0,20).map(x=>`<tr><td>${esc(x.id)}</td><td>${x.given_up?"given up":"will retry"}</td><td>${esc((x.last_error||"").slice(0,120))}</td></tr>`).join("");
    $("pauses").textContent=`${s.pauses.count} pause(s), ${span(s.pauses.total_seconds)} in all`+(s.pauses.open?", paused now":"");
    $("hosts").innerHTML=Object.entries(s.hosts_paused||{}).map(([h,x])=>`<div class="bad">host ${esc(h)} paused for ${span(s.at-x.since)}: ${esc(x.reason||"")}</div>`).join("");
    $("updated").textContent="updated "+new Date().toLocaleTimeString(); $("error").textContent="";
  }catch(err){$("error").textContent="cannot read the status: "+err;}
}
async function shows(){
  try{const r=await (await fetch("shows.json",{cache:"no-store"})).json();
    $("shows-summary").textContent=r.total?`the ${r.shows.length} hardest of ${r.total} (0-5; shows.tsv)`:"no corpus built yet";
    $("shows").innerHTML=r.shows.map(x=>`<tr><td>${esc(x.rank)}</td><td>${esc(x.series||"(no series)")}${x.season?" "+esc(x.season):""}</td><td><b>${esc(x.difficulty??"–")}</b></td><td>${esc(x.chars_per_minute??"–")} chars/min</td></tr>`).join("");
  }catch(err){$("shows-summary").textContent="cannot read the shows: "+err;}}
function clock(t){t=Math.floor(t);return `${Math.floor(t/3600)}:${String(Math.floor(t%3600/60)).padStart(2,"0")}:${String(t%60).padStart(2,"0")}`;}
async function find(word,series){
  const q=new URLSearchParams({q:word}); if(series) q.set("series",series);
  try{const r=await (await fetch("search.json?"+q,{cache:"no-store"})).json();
    if(r.error) throw new Error(r.error);
    $("search-summary").textContent=`${word}: ${r.uses??"–"} use(s) in ${r.episodes??"–"} episode(s); ${r.hits.length} shown`;
    $("hits").innerHTML=r.hits.map(h=>`<tr><td>${esc(h.series||"")}</td><td>${esc(h.episode)}</td><td>${clock(h.start)}</td><td class="hit">${esc(h.marked).replace(/【/g,"<mark>").replace(/】/g,"</mark>")}</td></tr>`).join("");
  }catch(err){$("search-summary").textContent="cannot search: "+err;}}
$("search-form").addEventListener("submit",ev=>{ev.preventDefault(); find($("q").value.trim(),$("series").value.trim());});
const asked=new URLSearchParams(location.search); if(asked.get("q")){$("q").value=asked.get("q"); find(asked.get("q"),asked.get("series")||"");}
refresh(); shows(); setInterval(refresh, __REFRESH_MS__); setInterval(shows, 60000);
</script></body></html>
"""
