//! Prometheus text metrics: requests by route and status, a latency
//! histogram, plus gauges read at scrape time (plans by status, module
//! up/down, queue depth).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Counts {
    requests: BTreeMap<(String, u16), u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// Request counters shared by every worker.
#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Metrics {
    /// Records one answered request.
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c.requests.entry((route.to_owned(), status)).or_default() += 1;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                c.buckets[i] += 1;
            }
        }
        c.count += 1;
        c.sum_seconds += seconds;
    }

    /// The request metrics in Prometheus text format.
    pub fn render_requests(&self, out: &mut String) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP madre_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE madre_http_requests_total counter\n");
        for ((route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "madre_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP madre_http_request_duration_seconds Time to answer a request.\n");
        out.push_str("# TYPE madre_http_request_duration_seconds histogram\n");
        for (bound, n) in BUCKETS.iter().zip(c.buckets) {
            let _ = writeln!(
                out,
                "madre_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "madre_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            c.count
        );
        let _ = writeln!(
            out,
            "madre_http_request_duration_seconds_sum {}",
            c.sum_seconds
        );
        let _ = writeln!(out, "madre_http_request_duration_seconds_count {}", c.count);
    }
}
