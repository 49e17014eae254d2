//! etcd's own write ceiling on this machine: single-key puts of a
//! task-record-sized value with C in flight, each its own raft proposal —
//! what agentmesh would pay per record if it did not batch. Prints one
//! line in the load generator's report format (`system: "etcd"`).
//!
//! cargo run --release --example etcd_put_rate -- http://127.0.0.1:2379 [PUTS] [CONCURRENCY] [VALUE_BYTES]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let puts: u64 = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let concurrency: u64 = args.next().map_or(Ok(64), |n| n.parse())?;
    let value_bytes: usize = args.next().map_or(Ok(1024), |n| n.parse())?;
    let client = Client::connect([endpoint.as_str()], None).await?;
    let value = vec![b'x'; value_bytes];
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let loops: Vec<_> = (0..concurrency)
        .map(|n| {
            let mut client = client.clone();
            let claimed = claimed.clone();
            let value = value.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while claimed.fetch_add(1, Ordering::Relaxed) < puts {
                    let key = format!("/agentmesh-bench/put-rate/{n}/{}", latencies.len());
                    let begun = Instant::now();
                    match client.put(key, value.clone(), None).await {
                        Ok(_) => latencies.push(begun.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(puts as usize);
    let mut errors = 0;
    for handle in loops {
        let (mine, failed) = handle.await?;
        latencies.extend(mine);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut cleanup = client.clone();
    cleanup
        .delete(
            "/agentmesh-bench/put-rate/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    latencies.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies
            .get(rank - 1)
            .map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3)
    };
    let report = serde_json::json!({
        "system": "etcd",
        "shape": "put",
        "tasks": puts,
        "concurrency": concurrency,
        "completed": latencies.len(),
        "errors": errors,
        "elapsed_s": (elapsed * 1e3).round() / 1e3,
        "throughput_per_s": (latencies.len() as f64 / elapsed * 1e3).round() / 1e3,
        "latency_ms": {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)},
        "notes": format!("single-key puts of {value_bytes} bytes, {concurrency} in flight, etcd-client"),
    });
    println!("{report}");
    Ok(())
}
