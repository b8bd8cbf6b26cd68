//! Memory stays bounded under load against faulty modules.

use crate::helpers::*;
use madre_models::Module;
use vx11_stubs::Behaviour;

/// Anonymous resident memory (heap and stacks) of this process, in KiB: what
/// a leak grows. File-backed pages (code faulted in as new paths run, the
/// SQLite WAL index) are left out.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn ten_thousand_requests_against_faulty_modules_keep_memory_bounded() {
    let panics = count_panics();
    let app = std::rc::Rc::new(spawn_app_with(&[("MADRE_CALL_TIMEOUT_MS", "300")]).await);
    app.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                error_status: Some(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    app.stubs
        .behave(
            Module::Switch,
            &Behaviour {
                garbage: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    async fn burst(app: &std::rc::Rc<TestApp>, total: usize) {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let app = app.clone();
                actix_rt::spawn(async move {
                    for _ in 0..total / 16 {
                        let r = app.chat(OPERATOR, "hello").await;
                        assert_eq!(r.status, 200);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
    }
    // Warm-up until the pools, SQLite's page caches (they fill as the
    // database grows past them) and the allocator's arenas have grown to
    // their working size: 9,600 requests (docs/reliability.md has the curve).
    burst(&app, 9_600).await;
    let before = rss_kib();
    burst(&app, 10_000).await;
    let after = rss_kib();
    test_log!("anonymous RSS: {before} KiB after warm-up, {after} KiB after 10,000 more requests");
    assert!(before > 0);
    // A leak of 400 bytes per request would break this bound.
    assert!(
        after * 10 <= before * 12,
        "anonymous RSS grew from {before} KiB to {after} KiB (more than 20 %)"
    );
    let metrics = app.send("GET", "/metrics", Some(VIEWER), None).await;
    assert!(s(&metrics.body).contains("madre_plans{status=\"ERROR\"} 19600"));
    app.stop().await;
    assert_no_panic(&panics);
}
