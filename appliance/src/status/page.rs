//! The technician's page: one server-rendered HTML document, no script, refreshes itself every
//! 5 s. The health banner is the first thing on it; then the LED, the queue, the last series,
//! destinations, disk and temperatures.

use std::fmt::Write;

use super::Snapshot;
use crate::health::State;

/// HTML-escapes text (written by hand: five characters do not need a crate).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn colour(state: State) -> &'static str {
    match state {
        State::Ready | State::Receiving | State::Scoring => "#1e7d32",
        State::Booting | State::Degraded => "#b26a00",
        State::Fault => "#b71c1c",
        State::Identify => "#1565c0",
    }
}

fn bytes(n: u64) -> String {
    let gb = n as f64 / 1e9;
    if gb >= 1.0 {
        format!("{gb:.1} GB")
    } else {
        format!("{:.1} MB", n as f64 / 1e6)
    }
}

fn uptime(s: f64) -> String {
    let s = s as u64;
    format!(
        "{}d {:02}h {:02}m {:02}s",
        s / 86400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

fn opt(s: &Option<String>) -> String {
    esc(s.as_deref().unwrap_or("–"))
}

pub fn render(s: &Snapshot) -> String {
    let st = s.health.state;
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cacd {box_id}: {state}</title>
<style>
body {{ font-family: sans-serif; margin: 0; color: #222; }}
header {{ padding: 1.2em 1.5em; color: #fff; background: {bg}; }}
header h1 {{ margin: 0; font-size: 2.4em; text-transform: uppercase; letter-spacing: .05em; }}
header p {{ margin: .3em 0 0; font-size: 1.1em; }}
main {{ padding: 0 1.5em 2em; }}
section {{ margin-top: 1.4em; }}
h2 {{ font-size: 1.1em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }}
table {{ border-collapse: collapse; font-size: .95em; }}
td, th {{ border: 1px solid #ddd; padding: .25em .6em; text-align: left; }}
th {{ background: #f3f3f3; }}
.kv td:first-child {{ color: #555; }}
.bad {{ color: #b71c1c; font-weight: bold; }}
.ok {{ color: #1e7d32; font-weight: bold; }}
code {{ font-size: .95em; }}
</style></head><body>
<header id="health" data-state="{state}"><h1 id="state">{state}</h1>
<p id="summary">{summary}</p></header>
<main>
"#,
        box_id = esc(&s.box_id),
        state = st.name(),
        bg = colour(st),
        summary = esc(&if s.health.reasons.is_empty() {
            st.led().meaning.to_string()
        } else {
            s.health.reasons.join("; ")
        }),
    );
    if !s.health.reasons.is_empty() {
        h.push_str("<section><h2>Problems</h2><ul id=\"reasons\">");
        for r in &s.health.reasons {
            let _ = write!(h, "<li class=\"bad\">{}</li>", esc(r));
        }
        h.push_str("</ul></section>\n");
    }
    let engine = s
        .engine
        .as_ref()
        .map(|m| {
            format!(
                "{} {} ({}, {}), sha256 {}…",
                m.name,
                m.version,
                m.engine,
                m.precision,
                m.sha256.get(..12).unwrap_or(&m.sha256)
            )
        })
        .unwrap_or_else(|| "not loaded".into());
    let led = s
        .led
        .shown
        .as_ref()
        .map(|l| format!("{} {} ({})", l.colour, l.pattern, l.device))
        .unwrap_or_else(|| "–".into());
    let _ = write!(
        h,
        r#"<section><h2>Appliance</h2><table class="kv" id="appliance">
<tr><td>box</td><td>{box_id} (AE {ae})</td></tr>
<tr><td>version</td><td id="version">{version}</td></tr>
<tr><td>uptime</td><td id="uptime">{uptime}</td></tr>
<tr><td>ready</td><td id="ready" class="{rc}">{ready}</td></tr>
<tr><td>engine</td><td id="engine">{engine}</td></tr>
<tr><td>status LED</td><td id="led">{led}</td></tr>
<tr><td>received</td><td id="received">{inst} instances, {bytes} in {assoc} open associations</td></tr>
</table></section>
"#,
        box_id = esc(&s.box_id),
        ae = esc(&s.ae_title),
        version = esc(s.version),
        uptime = uptime(s.uptime_s),
        rc = if s.ready { "ok" } else { "bad" },
        ready = if s.ready { "yes" } else { "no" },
        engine = esc(&engine),
        led = esc(&led),
        inst = s.received.instances,
        bytes = bytes(s.received.bytes),
        assoc = s.received.associations,
    );
    h.push_str("<section><h2>Queue</h2><table id=\"queue\"><tr>");
    for k in s.queue.keys() {
        let _ = write!(h, "<th>{}</th>", esc(k));
    }
    h.push_str("</tr><tr>");
    for (k, v) in &s.queue {
        let _ = write!(h, "<td data-state=\"{}\">{v}</td>", esc(k));
    }
    h.push_str("</tr></table></section>\n");

    let _ = write!(
        h,
        "<section><h2>Last {} series</h2><table id=\"series\">\
<tr><th>series</th><th>study</th><th>stage</th><th>instances</th><th>last instance</th>\
<th>updated</th><th>Agatston</th><th>risk</th><th>error</th></tr>",
        super::RECENT_SERIES
    );
    if s.series.is_empty() {
        h.push_str("<tr><td colspan=\"9\">no series yet</td></tr>");
    }
    for r in &s.series {
        let stage = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr class=\"series\"><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&r.series_hash),
            esc(&r.study_hash),
            esc(&stage),
            r.instances,
            opt(&r.last_instance_at),
            opt(&r.updated_at),
            r.agatston_total
                .map(|a| format!("{a:.1}"))
                .unwrap_or_else(|| "–".into()),
            opt(&r.risk_category),
            if r.error.is_some() { "bad" } else { "" },
            opt(&r.error),
        );
    }
    h.push_str("</table></section>\n");

    h.push_str(
        "<section><h2>Destinations</h2><table id=\"destinations\">\
<tr><th>destination</th><th>reachable</th><th>since failing</th><th>last OK</th>\
<th>attempts</th><th>failures</th><th>last error</th></tr>",
    );
    if s.destinations.is_empty() {
        h.push_str("<tr><td colspan=\"7\">none configured: results stay in the outbox</td></tr>");
    }
    for d in &s.destinations {
        let (cls, txt) = match d.status.reachable {
            Some(true) => ("ok", "yes"),
            Some(false) => ("bad", "no"),
            None => ("", "not checked yet"),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{cls}\">{txt}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td></tr>",
            esc(&d.id),
            opt(&d.failing_since),
            opt(&d.last_ok),
            d.status.attempts,
            d.status.failures,
            opt(&d.status.last_error),
        );
    }
    h.push_str("</table></section>\n");

    h.push_str("<section><h2>Machine</h2><table class=\"kv\" id=\"machine\">");
    match &s.disk {
        Some(d) => {
            let _ = write!(
                h,
                "<tr><td>disk ({})</td><td id=\"disk\">{} free of {} ({:.1} %)</td></tr>",
                esc(&d.path),
                bytes(d.free_bytes),
                bytes(d.total_bytes),
                d.free_percent
            );
        }
        None => h.push_str("<tr><td>disk</td><td id=\"disk\">unreadable</td></tr>"),
    }
    if let Some(m) = &s.memory {
        let _ = write!(
            h,
            "<tr><td>memory</td><td>{} available of {}</td></tr>",
            bytes(m.available_bytes),
            bytes(m.total_bytes)
        );
    }
    if s.temperatures.is_empty() {
        h.push_str("<tr><td>temperature</td><td id=\"temperature\">no sensors</td></tr>");
    }
    for t in &s.temperatures {
        let _ = write!(
            h,
            "<tr><td>temperature {}</td><td class=\"temperature\">{:.1} °C</td></tr>",
            esc(&t.kind),
            t.celsius
        );
    }
    if let Some(n) = s.reports_pending {
        let _ = write!(
            h,
            "<tr><td>reports waiting</td><td id=\"reports\">{n}</td></tr>"
        );
    }
    h.push_str("</table></section>\n</main></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
