//! Decode + rule evaluation per reading, the hot path of every message.
//! `cargo bench --bench pipeline`; results in docs/PERFORMANCE.md.

use chrono::{DateTime, Duration, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mizuban::config::Config;
use mizuban::model::Quality;
use mizuban::rules::{Evaluator, RuleState};
use std::hint::black_box;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-01-21T17:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn telemetry(n: usize) -> Vec<u8> {
    let samples: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let t = t0() + Duration::minutes(5 * i as i64);
            serde_json::json!({"t": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "q": 42.8 + i as f64 * 0.1, "p": 0.412, "tot": 1283345.2 + i as f64})
        })
        .collect();
    serde_json::json!({"schema":"dma-telemetry/1","device_id":"AKT-DMA-017","block_id":"B17","boot":12,"seq":48213,
        "sent_at":"2025-01-21T18:00:07Z","log_interval_s":300,"upload_interval_s":3600,"backlog":0,
        "units":{"q":"m3/h","p":"MPa","tot":"m3"},"samples":samples,
        "diag":{"batt_v":3.52,"batt_pct":71,"rssi_dbm":-87,"temp_c":3.5}})
    .to_string()
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let cfg = Config::load_embedded().expect("embedded config");
    let profile = cfg.profiles["akita-dma-logger"].clone();
    let site = cfg.site("B17").unwrap().clone();
    let evaluators: Vec<(String, Evaluator)> = cfg
        .rules
        .iter()
        .filter(|r| r.applies_to.matches(&site))
        .map(|r| (r.point.clone(), Evaluator::new(r.clone(), &site, 9)))
        .collect();
    let topic = "akita/v1/dma/B17/AKT-DMA-017/telemetry";
    let arrived = t0() + Duration::hours(1);

    let mut g = c.benchmark_group("dma_telemetry");
    for n in [1usize, 12, 288] {
        let payload = telemetry(n);
        // Readings per message: q, p, tot per sample + 3 diagnostics.
        let readings = (n * 3 + 3) as u64;
        g.throughput(Throughput::Elements(readings));
        g.bench_with_input(BenchmarkId::new("decode", n), &payload, |b, p| {
            b.iter(|| {
                mizuban::device::decode(&profile, topic, black_box(p), arrived, 1 << 20)
                    .unwrap()
                    .unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("decode_and_rules", n), &payload, |b, p| {
            b.iter_batched(
                || evaluators.iter().map(|_| RuleState::default()).collect::<Vec<_>>(),
                |mut states| {
                    let d = mizuban::device::decode(&profile, topic, black_box(p), arrived, 1 << 20)
                        .unwrap()
                        .unwrap();
                    let mut raised = 0;
                    for r in &d.readings {
                        for ((point, ev), st) in evaluators.iter().zip(states.iter_mut()) {
                            if *point == r.point {
                                raised += ev.evaluate(st, r.t, r.value, r.quality).len();
                            }
                        }
                    }
                    black_box(raised)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // One reading through one limits rule, steady state (the innermost loop).
    let (_, limits) = evaluators
        .iter()
        .find(|(p, e)| p == "p" && e.rule.id == "dma-pressure")
        .unwrap();
    let mut st = RuleState::default();
    let mut t = t0();
    c.bench_function("rule_limits_one_reading", |b| {
        b.iter(|| {
            t += Duration::seconds(300);
            black_box(limits.evaluate(&mut st, t, Some(0.41), Quality::Good))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
