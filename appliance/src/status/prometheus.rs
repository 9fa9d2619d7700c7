//! `/metrics` in the Prometheus text format (version 0.0.4), every name prefixed `cacd_`.
//! Written by hand: a few dozen lines, and no registry to keep in step with the monitor.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Snapshot;
use crate::health::{Monitor, LATENCY_BUCKETS, LED_TABLE};

/// A label value with `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP cacd_{name} {help}");
    let _ = writeln!(o, "# TYPE cacd_{name} {kind}");
}

pub fn render(s: &Snapshot, m: &Monitor) -> String {
    let mut o = String::new();
    head(
        &mut o,
        "build_info",
        "gauge",
        "Version of the running cacd.",
    );
    let _ = writeln!(o, "cacd_build_info{{version=\"{}\"}} 1", label(s.version));
    head(
        &mut o,
        "uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let _ = writeln!(o, "cacd_uptime_seconds {}", m.uptime().as_secs_f64());
    head(
        &mut o,
        "ready",
        "gauge",
        "1 once booted and without a fault.",
    );
    let _ = writeln!(o, "cacd_ready {}", u8::from(s.ready));
    head(
        &mut o,
        "health_state",
        "gauge",
        "1 for the current health state.",
    );
    for r in LED_TABLE.iter() {
        let _ = writeln!(
            o,
            "cacd_health_state{{state=\"{}\"}} {}",
            r.state.name(),
            u8::from(r.state == s.health.state)
        );
    }
    head(
        &mut o,
        "instances_received_total",
        "counter",
        "DICOM instances stored since start.",
    );
    let _ = writeln!(
        o,
        "cacd_instances_received_total {}",
        m.instances.load(Ordering::Relaxed)
    );
    head(
        &mut o,
        "bytes_received_total",
        "counter",
        "DICOM data set bytes received since start.",
    );
    let _ = writeln!(
        o,
        "cacd_bytes_received_total {}",
        m.bytes.load(Ordering::Relaxed)
    );
    head(&mut o, "associations", "gauge", "Open DICOM associations.");
    let _ = writeln!(
        o,
        "cacd_associations {}",
        m.associations.load(Ordering::Relaxed)
    );
    head(
        &mut o,
        "pending_connections",
        "gauge",
        "DICOM connections before their association (TLS handshake, A-ASSOCIATE-RQ).",
    );
    let _ = writeln!(
        o,
        "cacd_pending_connections {}",
        m.pending.load(Ordering::Relaxed)
    );
    head(
        &mut o,
        "receive_memory_bound_bytes",
        "gauge",
        "The most the receive path can hold for peers' bytes, from the [receive] limits.",
    );
    let _ = writeln!(
        o,
        "cacd_receive_memory_bound_bytes {}",
        s.receive_limits.memory_bound_bytes
    );
    let events = m.receive_events();
    for (family, metric, help) in [
        (
            "violations",
            "receive_violations_total",
            "Associations ended with an A-ABORT for a broken protocol or limit, by reason.",
        ),
        (
            "connections",
            "connections_refused_total",
            "DICOM connections not let in, not associated or timed out, by reason.",
        ),
        (
            "instances",
            "instances_refused_total",
            "C-STOREs answered with an error status, by reason.",
        ),
    ] {
        head(&mut o, metric, "counter", help);
        for ((f, reason), n) in &events {
            if *f == family {
                let _ = writeln!(o, "cacd_{metric}{{reason=\"{}\"}} {n}", label(reason));
            }
        }
    }
    head(&mut o, "series", "gauge", "Series in the queue by state.");
    for (state, n) in &s.queue {
        let _ = writeln!(o, "cacd_series{{state=\"{}\"}} {n}", label(state));
    }
    head(
        &mut o,
        "stage_latency_seconds",
        "histogram",
        "Time per pipeline stage and series.",
    );
    for (stage, h) in m.stages() {
        let st = label(&stage);
        for (le, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
            let _ = writeln!(
                o,
                "cacd_stage_latency_seconds_bucket{{stage=\"{st}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "cacd_stage_latency_seconds_bucket{{stage=\"{st}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            o,
            "cacd_stage_latency_seconds_sum{{stage=\"{st}\"}} {}",
            h.sum_s
        );
        let _ = writeln!(
            o,
            "cacd_stage_latency_seconds_count{{stage=\"{st}\"}} {}",
            h.count
        );
    }
    head(
        &mut o,
        "forward_attempts_total",
        "counter",
        "C-STORE delivery attempts per destination.",
    );
    for d in &s.destinations {
        let _ = writeln!(
            o,
            "cacd_forward_attempts_total{{destination=\"{}\"}} {}",
            label(&d.id),
            d.status.attempts
        );
    }
    head(
        &mut o,
        "forward_failures_total",
        "counter",
        "Failed C-STORE delivery attempts per destination.",
    );
    for d in &s.destinations {
        let _ = writeln!(
            o,
            "cacd_forward_failures_total{{destination=\"{}\"}} {}",
            label(&d.id),
            d.status.failures
        );
    }
    head(
        &mut o,
        "destination_reachable",
        "gauge",
        "1 when the destination answered last time, 0 when not.",
    );
    for d in &s.destinations {
        if let Some(r) = d.status.reachable {
            let _ = writeln!(
                o,
                "cacd_destination_reachable{{destination=\"{}\"}} {}",
                label(&d.id),
                u8::from(r)
            );
        }
    }
    if let Some(d) = &s.disk {
        head(
            &mut o,
            "disk_free_bytes",
            "gauge",
            "Free bytes on the data disk.",
        );
        let _ = writeln!(o, "cacd_disk_free_bytes {}", d.free_bytes);
        head(
            &mut o,
            "disk_total_bytes",
            "gauge",
            "Size of the data disk.",
        );
        let _ = writeln!(o, "cacd_disk_total_bytes {}", d.total_bytes);
    }
    if !s.temperatures.is_empty() {
        head(
            &mut o,
            "temperature_celsius",
            "gauge",
            "Thermal zone temperatures.",
        );
        for t in &s.temperatures {
            let _ = writeln!(
                o,
                "cacd_temperature_celsius{{zone=\"{}\",type=\"{}\"}} {}",
                label(&t.zone),
                label(&t.kind),
                t.celsius
            );
        }
    }
    if let Some(n) = s.reports_pending {
        head(
            &mut o,
            "reports_pending",
            "gauge",
            "Reports waiting in the outbox.",
        );
        let _ = writeln!(o, "cacd_reports_pending {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
