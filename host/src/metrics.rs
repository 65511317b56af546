//! Prometheus text exposition: a small writer for counters, gauges and histograms, and the
//! `--metrics-addr` HTTP endpoint that serves whatever a render callback writes.
//!
//! Each stage keeps its own atomic counters (`*Stats` structs); the pipeline renders them on each
//! scrape, so the hot path never touches a registry or a lock.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Builds one scrape's text.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    declared: std::collections::HashSet<String>,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// Writes `# HELP` and `# TYPE` once per metric family.
    fn declare(&mut self, name: &str, kind: &str, help: &str) {
        if self.declared.insert(name.to_owned()) {
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
    }

    /// A counter sample (`name` should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: Labels<'_>, value: u64) {
        self.declare(name, "counter", help);
        self.sample(name, labels, None, value as f64);
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: Labels<'_>, value: f64) {
        self.declare(name, "gauge", help);
        self.sample(name, labels, None, value);
    }

    /// A histogram: `buckets` are `(upper bound in the metric's unit, cumulative count)` in
    /// increasing order, without `+Inf` (that is `count`).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        self.declare(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets {
            self.sample(&bucket, labels, Some(&le.to_string()), *n as f64);
        }
        self.sample(&bucket, labels, Some("+Inf"), count as f64);
        self.sample(&format!("{name}_sum"), labels, None, sum);
        self.sample(&format!("{name}_count"), labels, None, count as f64);
    }

    fn sample(&mut self, name: &str, labels: Labels<'_>, le: Option<&str>, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() || le.is_some() {
            self.out.push('{');
            let mut first = true;
            for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
                if !first {
                    self.out.push(',');
                }
                first = false;
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Something that can write the current metrics.
pub type Render = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// Serves `GET /metrics` (and `/`) on `addr` until `stop` is cancelled. Returns the bound
/// address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    render: Render,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let render = render.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let resp = if matches!(req.uri().path(), "/metrics" | "/") {
                            let mut e = Exposition::default();
                            render(&mut e);
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(e.finish())))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from("not found\n")))
                        };
                        Ok::<_, Infallible>(resp.unwrap_or_default())
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut e = Exposition::default();
        e.counter("x_total", "things", &[("stage", "a\"b")], 3);
        e.counter("x_total", "things", &[("stage", "c")], 4);
        e.histogram("lat_seconds", "latency", &[], &[(0.1, 1), (1.0, 2)], 1.5, 3);
        let text = e.finish();
        assert_eq!(text.matches("# TYPE x_total counter").count(), 1);
        assert!(text.contains("x_total{stage=\"a\\\"b\"} 3\n"));
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("lat_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(text.contains("lat_seconds_count 3\n"));
    }
}
