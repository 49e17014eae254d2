//! Latency of one trivial task (`math.eval "1+1"`) through a running
//! cluster: submit, then watch until the terminal record, one task at a
//! time. A stopgap measurement until the load generator exists.
//!
//! cargo run --release --example trivial_latency -- http://127.0.0.1:7700 1000

use std::time::{Duration, Instant};

use agentmesh_proto::v1 as pb;
use agentmesh_proto::v1::task_service_client::TaskServiceClient;

const TRIVIAL: &str =
    r#"{"name":"trivial","tasks":[{"id":"x","capability":"math.eval","input":{"expr":"1+1"}}]}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7700".into());
    let runs: usize = args.next().map_or(Ok(1000), |n| n.parse())?;
    let mut client = TaskServiceClient::connect(endpoint).await?;
    let mut samples = Vec::with_capacity(runs);
    let mut submits = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let id = client
            .submit(pb::SubmitRequest {
                document: TRIVIAL.into(),
            })
            .await?
            .into_inner()
            .task_id;
        submits.push(started.elapsed());
        let mut stream = client
            .watch(pb::WatchTaskRequest {
                task_id: id,
                after_revision: 0,
            })
            .await?
            .into_inner();
        while let Some(record) = stream.message().await? {
            if record.status() == pb::TaskStatus::Completed {
                break;
            }
            if record.status() != pb::TaskStatus::Running
                && record.status() != pb::TaskStatus::Pending
            {
                return Err(format!("task ended {:?}: {}", record.status(), record.error).into());
            }
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    submits.sort();
    eprintln!(
        "submit alone: p50 {:?} p95 {:?}",
        submits[submits.len() / 2],
        submits[submits.len() * 95 / 100]
    );
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let total: Duration = samples.iter().sum();
    println!(
        "{{\"runs\": {runs}, \"p50_ms\": {:.3}, \"p95_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \"mean_ms\": {:.3}}}",
        at(0.50).as_secs_f64() * 1e3,
        at(0.95).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / runs as f64,
    );
    Ok(())
}
