//! The monitoring endpoint (`[metrics] listen` in node.toml): `GET /metrics` answers the
//! node's counters and gauges in the Prometheus text format (version 0.0.4), which Prometheus,
//! VictoriaMetrics, Grafana Agent and `curl` read alike. Plain HTTP: it shows counts only
//! (flows, messages, links, memory), never names of counterparties, states or users — bind it
//! to a loopback or monitoring-network address all the same.
//!
//! Each scrape reads atomics and one `/proc` file: nothing touches the database, so scraping
//! costs the node nothing measurable however big its vault is.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use treaty_flows::FlowEngine;

use crate::node::NodeMessenger;

/// What the endpoint reads.
pub struct Sources {
    /// The node's legal name (a label of `treaty_node_info`).
    pub name: String,
    /// When the node started.
    pub started: Instant,
    /// The flow engine.
    pub flows: FlowEngine,
    /// The messenger.
    pub messenger: NodeMessenger,
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|uri: Uri| async move { (StatusCode::NOT_FOUND, format!("no such endpoint: {uri} (the metrics are at /metrics)\n")) })
        .with_state(sources);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics endpoint stopped: {e}");
    }
}

async fn metrics(State(s): State<Arc<Sources>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&s))
}

/// One metric family: its help line, type line and samples.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[("", value as f64)]);
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help, &[("", value)]);
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The resident set size of this process in bytes, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn render(s: &Sources) -> String {
    let mut t = Text(String::new());
    let info = format!("{{name=\"{}\",version=\"{}\"}}", label(&s.name), env!("CARGO_PKG_VERSION"));
    t.family("treaty_node_info", "gauge", "The node's legal name and version (always 1).", &[(&info, 1.0)]);
    t.gauge("treaty_uptime_seconds", "Seconds since the node started.", s.started.elapsed().as_secs_f64());
    if let Some(rss) = resident_bytes() {
        t.gauge("treaty_resident_memory_bytes", "Resident memory of the node process.", rss as f64);
    }

    let f = s.flows.stats();
    t.counter("treaty_flows_started_total", "Flows started by clients, the scheduler or applications.", f.started.load(Ordering::Relaxed));
    t.counter("treaty_flows_responders_total", "Responder flows started by counterparties.", f.responders.load(Ordering::Relaxed));
    let ended = [
        ("{status=\"completed\"}", f.completed.load(Ordering::Relaxed) as f64),
        ("{status=\"failed\"}", f.failed.load(Ordering::Relaxed) as f64),
        ("{status=\"hospitalized\"}", f.hospitalized.load(Ordering::Relaxed) as f64),
    ];
    t.family("treaty_flows_ended_total", "counter", "Flows that ended, by how (hospitalized: waiting for an operator).", &ended);
    let (in_memory, parked) = s.flows.flow_counts();
    t.gauge("treaty_flows_in_memory", "Flows in memory: running, or waiting and not parked yet.", in_memory as f64);
    t.gauge("treaty_flows_parked", "Flows parked: waiting, their state in the database.", parked as f64);

    let m = s.messenger.stats();
    t.counter(
        "treaty_messages_acknowledged_total",
        "Messages sent and acknowledged by their receivers.",
        m.acknowledged.load(Ordering::Relaxed),
    );
    t.counter("treaty_messages_received_total", "New messages stored in the inbox.", m.received.load(Ordering::Relaxed));
    t.counter(
        "treaty_messages_duplicates_total",
        "Redelivered messages dropped because the inbox had them.",
        m.duplicates.load(Ordering::Relaxed),
    );
    t.counter(
        "treaty_message_delivery_failures_total",
        "Failed delivery attempts (connect, send, acknowledgement timeout, refusal); retried.",
        m.failures.load(Ordering::Relaxed),
    );
    let links = [
        ("{direction=\"in\"}", m.links_in.load(Ordering::Relaxed) as f64),
        ("{direction=\"out\"}", m.links_out.load(Ordering::Relaxed) as f64),
    ];
    t.family("treaty_links_open", "gauge", "Peer-to-peer links open now.", &links);
    t.counter("treaty_links_opened_total", "Peer-to-peer links opened, both directions.", m.links_opened.load(Ordering::Relaxed));
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"O=A "B"\C,L=x"#), r#"O=A \"B\"\\C,L=x"#);
        assert_eq!(label("a\nb"), "a\\nb");
    }

    #[test]
    fn families_have_help_type_and_samples() {
        let mut t = Text(String::new());
        t.counter("treaty_x_total", "Xs.", 3);
        t.family("treaty_y", "gauge", "Ys.", &[("{a=\"1\"}", 1.5), ("{a=\"2\"}", 2.0)]);
        assert_eq!(
            t.0,
            "# HELP treaty_x_total Xs.\n# TYPE treaty_x_total counter\ntreaty_x_total 3\n\
             # HELP treaty_y Ys.\n# TYPE treaty_y gauge\ntreaty_y{a=\"1\"} 1.5\ntreaty_y{a=\"2\"} 2\n"
        );
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
