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

/// Builds one scrape's text. Samples are grouped by metric family, whatever order they are
/// written in: the text format requires each family's samples to be contiguous, after its
/// `# HELP` and `# TYPE` (a scraper may otherwise see the same family twice, untyped).
#[derive(Debug, Default)]
pub struct Exposition {
    /// Each family's header and samples, in the order the families were first written.
    families: Vec<String>,
    index: std::collections::HashMap<String, usize>,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// The text of family `name`, begun with `# HELP` and `# TYPE` the first time.
    fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut String {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families
                    .push(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                self.index.insert(name.to_owned(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        &mut self.families[i]
    }

    /// A counter sample (`name` should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: Labels<'_>, value: u64) {
        sample(
            self.family(name, "counter", help),
            name,
            labels,
            None,
            value as f64,
        );
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: Labels<'_>, value: f64) {
        sample(self.family(name, "gauge", help), name, labels, None, value);
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
        let out = self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets {
            sample(out, &bucket, labels, Some(&le.to_string()), *n as f64);
        }
        sample(out, &bucket, labels, Some("+Inf"), count as f64);
        sample(out, &format!("{name}_sum"), labels, None, sum);
        sample(out, &format!("{name}_count"), labels, None, count as f64);
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.families.concat()
    }
}

/// Writes one sample line to `out`.
fn sample(out: &mut String, name: &str, labels: Labels<'_>, le: Option<&str>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                out.push(',');
            }
            first = false;
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Something that can write the current metrics.
pub type Render = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// Serves `GET /metrics` (and `/`) on `listener` (bound first, so that an address in use fails
/// a run before it starts anything) until `stop` is cancelled. Returns the bound address
/// (useful with port 0).
pub fn serve(
    listener: TcpListener,
    render: Render,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
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

    /// Samples of one family written apart (per transform, say) come out together, after the
    /// family's one header.
    #[test]
    fn families_are_contiguous() {
        let mut e = Exposition::default();
        for stage in ["a", "b"] {
            e.counter("in_total", "rows in", &[("t", stage)], 1);
            e.histogram("lat_seconds", "latency", &[("t", stage)], &[], 0.0, 0);
        }
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        let family = |l: &str| {
            let name = l
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ");
            name.split(['{', ' '])
                .next()
                .unwrap()
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned()
        };
        let order: Vec<String> = lines.iter().map(|l| family(l)).collect();
        let mut runs = order.clone();
        runs.dedup();
        assert_eq!(runs, ["in_total", "lat_seconds"], "{text}");
    }
}
