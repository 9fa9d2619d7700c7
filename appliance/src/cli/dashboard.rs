//! The static dashboard of a batch run: `DIR/index.html`, `DIR/summary.csv` and one
//! `thumb.png` per scored study.
//!
//! The page covers every study folder under DIR that holds a `result.json`, whichever shard
//! wrote it, so the last shard to finish (or `cacd batch --out DIR --index-only`) produces the
//! page of the whole run. It needs no server and no network: CSS, JavaScript and the SVG plots
//! are inline, thumbnails are files beside it with relative links. The HTML is written by hand
//! with `format!` (one page, no template engine worth a dependency); every value that comes
//! from a file is escaped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use image::RgbImage;

use crate::result::ResultJson;
use crate::score::risk_category;

/// Thumbnail size: half the summary image (1024×768), still legible.
pub const THUMB_WIDTH: u32 = 512;
pub const THUMB_HEIGHT: u32 = 384;
pub const THUMB_NAME: &str = "thumb.png";

/// The risk categories in order, with the slug the page uses for them and their colour.
pub const CATEGORIES: [(&str, &str, &str); 6] = [
    ("0", "c0", "#3f9d5d"),
    ("1-10", "c1", "#98b83a"),
    ("11-100", "c2", "#d9ae24"),
    ("101-400", "c3", "#e07b29"),
    (">400", "c4", "#d03b3b"),
    ("rejected", "rejected", "#7a7f88"),
];

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable summary image: {reason}")]
    Summary { path: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DashboardError + '_ {
    move |source| DashboardError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One study of the run, as found on disk.
#[derive(Debug, Clone)]
pub struct Study {
    /// The study's folder name under DIR (a hash of its StudyInstanceUID).
    pub dir: String,
    pub result: ResultJson,
    /// Whether `DIR/<dir>/thumb.png` exists.
    pub thumb: bool,
}

impl Study {
    /// The page's category slug: one of [`CATEGORIES`].
    pub fn category_slug(&self) -> &'static str {
        let label = if self.result.status == "scored" {
            self.result.risk_category.as_deref().unwrap_or("rejected")
        } else {
            "rejected"
        };
        CATEGORIES
            .iter()
            .find(|(l, _, _)| *l == label)
            .map(|(_, slug, _)| *slug)
            .unwrap_or("rejected")
    }
}

/// What [`write_index`] wrote.
#[derive(Debug)]
pub struct IndexSummary {
    pub index: PathBuf,
    pub csv: PathBuf,
    pub studies: usize,
    /// Folders that were skipped, with why (unreadable result.json, bad summary image).
    pub problems: Vec<String>,
}

/// Every study folder under `out` with a parseable `result.json`, sorted by folder name, and
/// the problems met on the way (a result.json that does not parse is reported, not fatal).
pub fn collect(out: &Path) -> Result<(Vec<Study>, Vec<String>), DashboardError> {
    let mut studies = Vec::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(out).map_err(io_err(out))? {
        let entry = entry.map_err(io_err(out))?;
        let dir = entry.path();
        let path = dir.join("result.json");
        if !path.is_file() {
            continue;
        }
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            problems.push(format!("{}: folder name is not UTF-8", dir.display()));
            continue;
        };
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<ResultJson>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(result) => studies.push(Study {
                thumb: dir.join(THUMB_NAME).is_file(),
                dir: name,
                result,
            }),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    studies.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok((studies, problems))
}

/// Writes `study_dir/thumb.png` from `study_dir/summary.dcm` unless an up-to-date one is
/// there. Returns whether a thumbnail exists afterwards (false: no summary, e.g. rejected).
pub fn ensure_thumbnail(study_dir: &Path) -> Result<bool, DashboardError> {
    let summary = study_dir.join("summary.dcm");
    let thumb = study_dir.join(THUMB_NAME);
    let Ok(summary_meta) = std::fs::metadata(&summary) else {
        return Ok(false);
    };
    if let (Ok(t), Ok(s)) = (
        std::fs::metadata(&thumb).and_then(|m| m.modified()),
        summary_meta.modified(),
    ) {
        if t >= s {
            return Ok(true);
        }
    }
    let img = summary_rgb(&summary)?;
    let small = image::imageops::resize(
        &img,
        THUMB_WIDTH,
        THUMB_HEIGHT,
        image::imageops::FilterType::Triangle,
    );
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(small)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| DashboardError::Summary {
            path: thumb.display().to_string(),
            reason: format!("PNG encoding: {e}"),
        })?;
    write_unique_atomic(&thumb, &png)?;
    Ok(true)
}

/// The RGB pixels of our own Secondary Capture summary (uncompressed, 8-bit RGB). Anything
/// else is refused with a reason rather than guessed at.
pub fn summary_rgb(path: &Path) -> Result<RgbImage, DashboardError> {
    let bad = |reason: String| DashboardError::Summary {
        path: path.display().to_string(),
        reason,
    };
    let obj = dicom_object::open_file(path).map_err(|e| bad(e.to_string()))?;
    let ts = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    // Native (not encapsulated) little-endian syntaxes only: the summary is written so.
    if !matches!(ts, "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1") {
        return Err(bad(format!("transfer syntax {ts} is not native")));
    }
    let int = |tag, name: &str| -> Result<u32, DashboardError> {
        obj.element(tag)
            .map_err(|e| bad(format!("{name}: {e}")))?
            .to_int::<u32>()
            .map_err(|e| bad(format!("{name}: {e}")))
    };
    let rows = int(tags::ROWS, "Rows")?;
    let cols = int(tags::COLUMNS, "Columns")?;
    let spp = int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let bits = int(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let planar = int(tags::PLANAR_CONFIGURATION, "PlanarConfiguration").unwrap_or(0);
    let photometric = obj
        .element(tags::PHOTOMETRIC_INTERPRETATION)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default();
    if spp != 3 || bits != 8 || photometric != "RGB" {
        return Err(bad(format!(
            "{photometric} with {spp} samples of {bits} bits, expected 8-bit RGB"
        )));
    }
    let data = obj
        .element(tags::PIXEL_DATA)
        .map_err(|e| bad(format!("PixelData: {e}")))?
        .to_bytes()
        .map_err(|e| bad(format!("PixelData: {e}")))?;
    let n = (rows as usize) * (cols as usize);
    if data.len() < 3 * n {
        return Err(bad(format!(
            "PixelData has {} bytes, {rows}×{cols} RGB needs {}",
            data.len(),
            3 * n
        )));
    }
    let interleaved: Vec<u8> = if planar == 1 {
        // RRR…GGG…BBB → RGBRGB…
        (0..n)
            .flat_map(|i| [data[i], data[n + i], data[2 * n + i]])
            .collect()
    } else {
        data[..3 * n].to_vec()
    };
    RgbImage::from_raw(cols, rows, interleaved).ok_or_else(|| bad("pixel buffer size".into()))
}

/// The CSV header shared by the per-shard and the merged summaries.
pub const CSV_HEADER: &str = "study,status,agatston_total,volume_mm3,LM,LAD,LCX,RCA,risk_category,cac_drs,reason,study_instance_uid,series_instance_uid\n";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"").replace(['\n', '\r'], " "))
    } else {
        s.to_string()
    }
}

/// One CSV row (RFC 4180 quoting).
pub fn csv_row(dir: &str, r: &ResultJson) -> String {
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let pv = r.per_vessel;
    let vessel = |f: fn(&crate::score::PerVessel) -> f64| num(pv.as_ref().map(f));
    [
        csv_field(dir),
        csv_field(&r.status),
        num(r.agatston_total),
        num(r.volume_mm3),
        vessel(|p| p.LM),
        vessel(|p| p.LAD),
        vessel(|p| p.LCX),
        vessel(|p| p.RCA),
        csv_field(r.risk_category.as_deref().unwrap_or("")),
        csv_field(r.cac_drs.as_deref().unwrap_or("")),
        csv_field(r.reason.as_deref().unwrap_or("")),
        csv_field(&r.study_instance_uid),
        csv_field(&r.series_instance_uid),
    ]
    .join(",")
        + "\n"
}

/// Writes thumbnails that are missing, `index.html` and the merged `summary.csv` for every
/// study under `out`.
pub fn write_index(out: &Path) -> Result<IndexSummary, DashboardError> {
    let (mut studies, mut problems) = collect(out)?;
    for s in &mut studies {
        match ensure_thumbnail(&out.join(&s.dir)) {
            Ok(t) => s.thumb = t,
            Err(e) => {
                s.thumb = false;
                problems.push(e.to_string());
            }
        }
    }
    let generated = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let index = out.join("index.html");
    write_unique_atomic(&index, render_html(&studies, &generated).as_bytes())?;
    let mut csv = String::from(CSV_HEADER);
    for s in &studies {
        csv += &csv_row(&s.dir, &s.result);
    }
    let csv_path = out.join("summary.csv");
    write_unique_atomic(&csv_path, csv.as_bytes())?;
    Ok(IndexSummary {
        index,
        csv: csv_path,
        studies: studies.len(),
        problems,
    })
}

/// Like `fsutil::write_atomic`, but with a temp name of its own: shards finishing at the same
/// moment on shared storage each write the index, and must not share one temp file.
fn write_unique_atomic(path: &Path, bytes: &[u8]) -> Result<(), DashboardError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".cacd-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    // NamedTempFile is created 0600; the page and thumbnails are meant to be read by others.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map_err(|e| DashboardError::Io {
        path: path.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Agatston histogram bins (lower, upper]; the first bin is exactly 0. Their upper edges line
/// up with the risk category limits (10, 100, 400), so each bar has one category colour.
const BINS: [(f64, f64, &str); 10] = [
    (f64::NEG_INFINITY, 0.0, "0"),
    (0.0, 3.0, "≤3"),
    (3.0, 10.0, "≤10"),
    (10.0, 30.0, "≤30"),
    (30.0, 100.0, "≤100"),
    (100.0, 200.0, "≤200"),
    (200.0, 400.0, "≤400"),
    (400.0, 1000.0, "≤1000"),
    (1000.0, 2000.0, "≤2000"),
    (2000.0, f64::INFINITY, ">2000"),
];

fn colour_of(label: &str) -> &'static str {
    CATEGORIES
        .iter()
        .find(|(l, _, _)| *l == label)
        .map(|(_, _, c)| *c)
        .unwrap_or("#7a7f88")
}

/// A bar chart as inline SVG. `bars`: (label, count, colour, optional link).
fn bar_chart(title: &str, id: &str, bars: &[(String, usize, &str, Option<String>)]) -> String {
    let (w, h, left, bottom, top) = (460.0, 236.0, 34.0, 36.0, 36.0);
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let slot = (w - left - 8.0) / bars.len().max(1) as f64;
    let plot_h = h - bottom - top;
    let mut svg = format!(
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"{left}\" y=\"16\" class=\"ct\">{t}</text>\
         <line x1=\"{left}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" class=\"axis\"/>\
         <text x=\"{lx}\" y=\"{ty}\" class=\"tick\" text-anchor=\"end\">{m}</text>\
         <text x=\"{lx}\" y=\"{y0}\" class=\"tick\" text-anchor=\"end\">0</text>",
        t = esc(title),
        y0 = h - bottom,
        x1 = w - 8.0,
        lx = left - 4.0,
        ty = top + 4.0,
        m = max as usize,
    );
    for (i, (label, count, colour, link)) in bars.iter().enumerate() {
        let bh = plot_h * (*count as f64) / max;
        let x = left + slot * i as f64 + slot * 0.12;
        let bw = slot * 0.76;
        let y = h - bottom - bh;
        let bar = format!(
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{colour}\" data-count=\"{count}\"><title>{l}: {count}</title></rect>\
             <text x=\"{cx:.1}\" y=\"{vy:.1}\" class=\"val\" text-anchor=\"middle\">{count}</text>\
             <text x=\"{cx:.1}\" y=\"{ly:.1}\" class=\"tick\" text-anchor=\"middle\">{l}</text>",
            l = esc(label),
            cx = x + bw / 2.0,
            vy = y - 3.0,
            ly = h - bottom + 14.0,
        );
        match link {
            Some(href) => svg += &format!("<a href=\"{}\">{bar}</a>", esc(href)),
            None => svg += &bar,
        }
    }
    svg += "</svg>";
    svg
}

fn fmt_score(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn card(s: &Study) -> String {
    let r = &s.result;
    let slug = s.category_slug();
    let label = CATEGORIES
        .iter()
        .find(|(_, sl, _)| *sl == slug)
        .map(|(l, _, _)| *l)
        .unwrap_or("rejected");
    let dir = esc(&s.dir);
    let score = r.agatston_total.unwrap_or(-1.0);
    let img = if s.thumb {
        format!(
            "<a href=\"{dir}/{THUMB_NAME}\"><img src=\"{dir}/{THUMB_NAME}\" loading=\"lazy\" width=\"{THUMB_WIDTH}\" height=\"{THUMB_HEIGHT}\" alt=\"summary image of study {dir}\"></a>"
        )
    } else {
        format!(
            "<div class=\"noimg\">{}</div>",
            if r.status == "scored" {
                "no summary image"
            } else {
                "not scored"
            }
        )
    };
    let mut body = String::new();
    if r.status == "scored" {
        body += &format!(
            "<div class=\"score\"><b>{}</b> Agatston <span class=\"dim\">· {} mm³ · CAC-DRS {}</span></div>",
            fmt_score(score),
            r.volume_mm3.map(fmt_score).unwrap_or_default(),
            esc(r.cac_drs.as_deref().unwrap_or("")),
        );
        if let Some(pv) = &r.per_vessel {
            body +=
                "<table class=\"pv\"><tr><th>LM</th><th>LAD</th><th>LCX</th><th>RCA</th></tr><tr>";
            for v in [pv.LM, pv.LAD, pv.LCX, pv.RCA] {
                body += &format!("<td>{}</td>", fmt_score(v));
            }
            body += "</tr></table>";
        }
        let warnings = &r.quality.warnings;
        if !warnings.is_empty() {
            body += &format!(
                "<div class=\"warn\" title=\"{}\">{} quality warning{}</div>",
                esc(&warnings.join("\n")),
                warnings.len(),
                if warnings.len() == 1 { "" } else { "s" }
            );
        }
    } else {
        body += &format!(
            "<div class=\"reason\">{}</div>",
            esc(r.reason.as_deref().unwrap_or("rejected"))
        );
    }
    let model = r
        .model
        .as_ref()
        .map(|m| {
            format!(
                " · {} {} {}",
                esc(&m.name),
                esc(&m.version),
                esc(&m.precision)
            )
        })
        .unwrap_or_default();
    format!(
        "<article class=\"card\" data-cat=\"{slug}\" data-score=\"{score}\" data-name=\"{dir}\" data-uid=\"{uid}\">\
         {img}<div class=\"meta\"><div class=\"head\"><span class=\"badge {slug}\">{label}</span>\
         <a class=\"name\" href=\"{dir}/result.json\" title=\"StudyInstanceUID {uid}\">{dir}</a></div>\
         {body}<div class=\"dim small\">slice spacing {sp}{model}</div></div></article>\n",
        label = esc(label),
        uid = esc(&r.study_instance_uid),
        sp = r
            .quality
            .slice_spacing_mm
            .map(|v| format!("{v} mm"))
            .unwrap_or_else(|| "?".into()),
    )
}

const STYLE: &str = r#"
:root{color-scheme:light dark;--bg:#f6f7f9;--fg:#1c1f24;--card:#fff;--dim:#687080;--line:#d9dce2}
@media (prefers-color-scheme:dark){:root{--bg:#15171b;--fg:#e4e6ea;--card:#1e2127;--dim:#9aa1ad;--line:#343842}}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
header{padding:16px 24px 4px}h1{font-size:20px;margin:0 0 4px}.dim{color:var(--dim)}.small{font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:16px;padding:8px 24px}.chart{width:460px;max-width:100%;background:var(--card);border:1px solid var(--line);border-radius:6px}
.chart .ct{font-weight:600;font-size:13px;fill:var(--fg)}.chart .tick{font-size:10px;fill:var(--dim)}.chart .val{font-size:10px;fill:var(--fg)}.chart .axis{stroke:var(--line)}
.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:8px 24px;position:sticky;top:0;background:var(--bg);border-bottom:1px solid var(--line);z-index:1}
.filters label{white-space:nowrap}.filters input[type=search]{padding:4px 6px;min-width:220px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;padding:14px 24px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;overflow:hidden}.card[hidden]{display:none}
.card img{display:block;width:100%;height:auto;background:#101216}.noimg{aspect-ratio:4/3;display:flex;align-items:center;justify-content:center;background:#101216;color:#8a8f99}
.meta{padding:8px 10px}.head{display:flex;gap:8px;align-items:center;margin-bottom:4px}.name{font-family:ui-monospace,monospace;font-size:12px;color:var(--dim)}
.badge{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;font-weight:600}
.c0{background:#3f9d5d}.c1{background:#98b83a}.c2{background:#d9ae24}.c3{background:#e07b29}.c4{background:#d03b3b}.rejected{background:#7a7f88}
.score b{font-size:18px}.pv{border-collapse:collapse;margin:4px 0;font-size:12px}.pv th,.pv td{padding:1px 8px 1px 0;text-align:left}.pv th{color:var(--dim);font-weight:500}
.warn{color:#c77700;font-size:12px}.reason{color:#b33;font-size:13px}
"#;

/// Filters by category (checkboxes, or `#cat=c3,c4` in the URL, which the category chart's
/// bars link to), a text filter and sorting. The page is complete without it.
const SCRIPT: &str = r#"
(function(){
  var grid=document.getElementById('grid');
  var cards=Array.prototype.slice.call(grid.querySelectorAll('.card'));
  var boxes=Array.prototype.slice.call(document.querySelectorAll('input[name=cat]'));
  var q=document.getElementById('q'), sort=document.getElementById('sort'), shown=document.getElementById('shown');
  function fromHash(){
    var h=new URLSearchParams(location.hash.slice(1));
    if(h.has('cat')){var on=h.get('cat').split(',');boxes.forEach(function(b){b.checked=on.indexOf(b.value)>=0;});}
    else{boxes.forEach(function(b){b.checked=true;});}
    q.value=h.get('q')||''; if(h.get('sort')) sort.value=h.get('sort');
  }
  function toHash(){
    var on=boxes.filter(function(b){return b.checked;}).map(function(b){return b.value;});
    var h=new URLSearchParams();
    if(on.length!==boxes.length) h.set('cat',on.join(','));
    if(q.value) h.set('q',q.value);
    if(sort.value!=='name') h.set('sort',sort.value);
    history.replaceState(null,'',h.toString()?'#'+h.toString():location.pathname);
  }
  function apply(){
    var on={}; boxes.forEach(function(b){on[b.value]=b.checked;});
    var text=q.value.trim().toLowerCase(), n=0;
    cards.forEach(function(c){
      var ok=on[c.dataset.cat]&&(!text||c.dataset.name.indexOf(text)>=0||c.dataset.uid.toLowerCase().indexOf(text)>=0);
      c.hidden=!ok; if(ok) n++;
    });
    var key=sort.value;
    cards.slice().sort(function(a,b){
      if(key==='name') return a.dataset.name<b.dataset.name?-1:1;
      var d=parseFloat(a.dataset.score)-parseFloat(b.dataset.score);
      return key==='asc'?d:-d;
    }).forEach(function(c){grid.appendChild(c);});
    shown.textContent=String(n);
    document.body.setAttribute('data-shown',String(n));
    document.body.setAttribute('data-ready','1');
  }
  boxes.forEach(function(b){b.addEventListener('change',function(){toHash();apply();});});
  q.addEventListener('input',function(){toHash();apply();});
  sort.addEventListener('change',function(){toHash();apply();});
  window.addEventListener('hashchange',function(){fromHash();apply();});
  fromHash(); apply();
})();
"#;

/// The whole page.
pub fn render_html(studies: &[Study], generated: &str) -> String {
    let mut per_cat: BTreeMap<&str, usize> = BTreeMap::new();
    for s in studies {
        *per_cat.entry(s.category_slug()).or_default() += 1;
    }
    let scored: Vec<f64> = studies
        .iter()
        .filter(|s| s.result.status == "scored")
        .filter_map(|s| s.result.agatston_total)
        .collect();
    let rejected = studies.len() - scored.len();

    let cat_bars: Vec<_> = CATEGORIES
        .iter()
        .map(|(label, slug, colour)| {
            (
                label.to_string(),
                per_cat.get(slug).copied().unwrap_or(0),
                *colour,
                Some(format!("#cat={slug}")),
            )
        })
        .collect();
    let hist_bars: Vec<_> = BINS
        .iter()
        .map(|(lo, hi, label)| {
            let n = scored.iter().filter(|&&v| v > *lo && v <= *hi).count();
            let colour = colour_of(risk_category(if hi.is_finite() { *hi } else { 1e9 }));
            (label.to_string(), n, colour, None)
        })
        .collect();

    let mut filters = String::new();
    for (label, slug, _) in CATEGORIES {
        filters += &format!(
            "<label><input type=\"checkbox\" name=\"cat\" value=\"{slug}\" checked> <span class=\"badge {slug}\">{}</span> {}</label>",
            esc(label),
            per_cat.get(slug).copied().unwrap_or(0)
        );
    }
    let median = {
        let mut v = scored.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    let models: std::collections::BTreeSet<String> = studies
        .iter()
        .filter_map(|s| s.result.model.as_ref())
        .map(|m| format!("{} {} ({}, {})", m.name, m.version, m.precision, m.engine))
        .collect();

    let mut cards = String::new();
    for s in studies {
        cards += &card(s);
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>cacd batch: {n} studies</title><style>{STYLE}</style></head>\
         <body data-studies=\"{n}\"><header><h1>Coronary artery calcium: {n} studies</h1>\
         <div class=\"dim\">{sc} scored, {rejected} not scored · median Agatston {med} · models: {models} · generated {gen} by cacd {ver}</div></header>\
         <section class=\"charts\">{c1}{c2}</section>\
         <nav class=\"filters\">{filters}<input id=\"q\" type=\"search\" placeholder=\"study folder or UID\" aria-label=\"filter by study\">\
         <label>sort <select id=\"sort\"><option value=\"name\">folder</option><option value=\"desc\">score ↓</option><option value=\"asc\">score ↑</option></select></label>\
         <span>showing <b id=\"shown\">{n}</b> of {n}</span></nav>\
         <main id=\"grid\">\n{cards}</main><script>{SCRIPT}</script></body></html>\n",
        n = studies.len(),
        sc = scored.len(),
        med = median.map(fmt_score).unwrap_or_else(|| "–".into()),
        models = if models.is_empty() {
            "–".to_string()
        } else {
            esc(&models.into_iter().collect::<Vec<_>>().join("; "))
        },
        gen = esc(generated),
        ver = env!("CARGO_PKG_VERSION"),
        c1 = bar_chart("Risk category (studies)", "chart-category", &cat_bars),
        c2 = bar_chart("Agatston score (studies per bin)", "chart-agatston", &hist_bars),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(total: Option<f64>, cat: &str) -> ResultJson {
        let mut r = ResultJson::rejected("1.2.3", "1.2.3.4", "too few slices <script>");
        if let Some(t) = total {
            r.status = "scored".into();
            r.reason = None;
            r.agatston_total = Some(t);
            r.risk_category = Some(cat.into());
            r.cac_drs = Some("A1/N1".into());
        }
        r
    }

    #[test]
    fn csv_quotes_and_counts_columns() {
        let r = result(None, "");
        let row = csv_row("abc", &r);
        // No comma or quote in it: written as is.
        assert!(row.contains(",too few slices <script>,"), "{row}");
        let header_cols = CSV_HEADER.trim_end().split(',').count();
        let r2 = ResultJson {
            reason: Some("a, \"b\"".into()),
            ..r
        };
        let row2 = csv_row("abc", &r2);
        assert!(row2.contains("\"a, \"\"b\"\"\""), "{row2}");
        // Naive split over-counts only inside the quoted field.
        assert_eq!(row.trim_end().split(',').count(), header_cols);
    }

    #[test]
    fn page_escapes_and_counts() {
        let studies = vec![
            Study {
                dir: "aa".into(),
                result: result(Some(0.0), "0"),
                thumb: false,
            },
            Study {
                dir: "bb".into(),
                result: result(Some(250.0), "101-400"),
                thumb: true,
            },
            Study {
                dir: "cc".into(),
                result: result(None, ""),
                thumb: false,
            },
        ];
        let html = render_html(&studies, "now");
        assert_eq!(html.matches("<article class=\"card\"").count(), 3);
        assert!(!html.contains("<script>\"") && !html.contains("slices <script>"));
        assert!(html.contains("too few slices &lt;script&gt;"));
        assert!(html.contains("data-cat=\"c3\""));
        assert!(html.contains("bb/thumb.png"));
        // The 250 lands in the (200, 400] bin and the category chart counts one rejected.
        assert!(html.contains("<title>≤400: 1</title>"), "histogram bin");
        assert!(html.contains("<title>rejected: 1</title>"));
    }
}
