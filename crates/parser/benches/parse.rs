//! Parser throughput on typical messages and on a maximal 8000-character one.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const MESSAGES: &[&str] = &[
    "hello, what can you tell me about the weather",
    "restart the switch",
    "delete all data",
    "mix these 3 stems",
    "¿cómo está la salud de hermes?",
    "run job=nightly retries=3 in parallel",
];

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parser");
    group.throughput(Throughput::Elements(MESSAGES.len() as u64));
    group.bench_function("typical_messages", |b| {
        b.iter(|| {
            for m in MESSAGES {
                black_box(madre_parser::parse(black_box(m)));
            }
        })
    });
    let long = "lorem ipsum dolor sit amet ".repeat(296);
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_8000_chars", |b| {
        b.iter(|| black_box(madre_parser::parse(black_box(&long))))
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
