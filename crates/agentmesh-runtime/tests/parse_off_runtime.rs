//! Parsing a task document is blocking work (bounded by the task limits,
//! but a megabyte of YAML still takes a while): it runs on a blocking
//! thread, so the async runtime's own threads keep serving lease
//! keep-alives and other calls meanwhile. On a runtime of one thread, a
//! parse done inline would stop every other task until it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentmesh_core::task::TaskLimits;
use agentmesh_registry::{MemoryRegistry, Registry};
use agentmesh_runtime::api::task::TaskApi;

/// Close to 1 MB of YAML: many small entries, the slow case for a parser.
fn heavy_document() -> String {
    let mut doc = String::from(
        "name: heavy\ntasks:\n  - id: a\n    capability: math.eval\n    input:\n      items:\n",
    );
    while doc.len() < 1000 * 1024 {
        doc.push_str("        - [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n");
    }
    doc
}

#[tokio::test(flavor = "current_thread")]
async fn the_runtime_keeps_running_while_a_document_is_parsed() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let api = TaskApi::new(registry, None, TaskLimits::default()).with_parse_concurrency(1);
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(5));
            loop {
                interval.tick().await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Let the ticker start.
    tokio::task::yield_now().await;
    let document = heavy_document();
    let started = Instant::now();
    let before = ticks.load(Ordering::SeqCst);
    // Refused after parsing (the input is over max_input_bytes, and there
    // is no coordinator here); only the parse matters.
    assert!(api.submit(&document).await.is_err());
    let elapsed = started.elapsed();
    let during = ticks.load(Ordering::SeqCst) - before;
    ticker.abort();
    assert!(
        elapsed < Duration::from_millis(50) || during >= 3,
        "the runtime's only thread was held for {elapsed:?}: {during} ticks of 5 ms"
    );
    eprintln!("parsed ~1 MB of YAML in {elapsed:?}; the runtime ticked {during} times meanwhile");
}
