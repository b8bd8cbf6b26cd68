//! Prometheus text metrics: requests by route and status, a latency
//! histogram, plus gauges read at scrape time (plans by status, module
//! up/down, queue depth) and the database writer's figures (through
//! `prometheus-client`).

use madre_flows::WriterStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
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

/// The database writer's figures at scrape time, in Prometheus text: the
/// queue it serves, what its commits carried and what they cost.
#[derive(Debug)]
struct WriterCollector(WriterStats);

impl Collector for WriterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.0;
        let counters: [(&str, &str, u64); 5] = [
            (
                "madre_db_commits",
                "Transactions the database writer committed.",
                s.commits,
            ),
            (
                "madre_db_writes",
                "Writes those commits carried (writes / commits is the mean batch size).",
                s.writes,
            ),
            (
                "madre_db_statements",
                "SQL statements the writer ran, transaction control not counted.",
                s.statements,
            ),
            (
                "madre_db_wal_frames",
                "WAL frames (database pages) the commits appended.",
                s.wal_frames,
            ),
            (
                "madre_db_round_trips",
                "Round trips to the PostgreSQL server by every session of the database (0 on SQLite).",
                s.round_trips,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let seconds = ConstCounter::new(s.commit_time.as_secs_f64());
        seconds.encode(encoder.encode_descriptor(
            "madre_db_commit_seconds",
            "Time the writer spent running and committing batches (divide by commits for the mean commit latency).",
            None,
            seconds.metric_type(),
        )?)?;
        let gauges: [(&str, &str, u64); 2] = [
            (
                "madre_db_write_queue_depth",
                "Writes waiting for the writer now.",
                s.queue_depth,
            ),
            (
                "madre_db_largest_batch",
                "The most writes one commit carried.",
                s.largest_batch,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Appends what storage holds and has room for: the archives' totals, the
/// database's size and free pages, the disk's free bytes.
pub fn render_storage(out: &mut String, space: &madre_flows::StorageSpace) {
    let families: [(&str, &str, &str, u64); 4] = [
        (
            "madre_plans_archived_total",
            "counter",
            "Finished plans moved to the archives since start.",
            space.plans_archived,
        ),
        (
            "madre_archive_bytes_total",
            "counter",
            "Compressed bytes appended to the archives since start.",
            space.bytes_archived,
        ),
        (
            "madre_db_size_bytes",
            "gauge",
            "The database file's size (its WAL not counted).",
            space.database_bytes,
        ),
        (
            "madre_db_free_bytes",
            "gauge",
            "Free pages inside the database, reused by new rows.",
            space.free_page_bytes,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    if let Some((free, _)) = space.disk {
        let _ = writeln!(
            out,
            "# HELP madre_disk_free_bytes Free bytes of the file system the database is on.\n# TYPE madre_disk_free_bytes gauge\nmadre_disk_free_bytes {free}"
        );
    }
}

/// Appends the writer's figures to a scrape (Prometheus text: the
/// OpenMetrics end marker is left out, as more families follow).
pub fn render_writer(out: &mut String, stats: WriterStats) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(WriterCollector(stats)));
    let mut text = String::new();
    if encode(&mut text, &registry).is_ok() {
        out.push_str(text.trim_end().trim_end_matches("# EOF").trim_end());
        out.push('\n');
    }
}
