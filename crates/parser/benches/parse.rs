//! Parser throughput on typical messages, on a maximal 8000-character one,
//! and on maximal messages built to be slow for the safety gate.
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

/// Maximal messages built to be slow for the safety gate (issue 14): every
/// character non-Latin, letter-spaced, or glued with zero-width spaces.
fn hostile(c: &mut Criterion) {
    let cases = [
        ("cjk_8000_chars", "你好世界今天天气怎么样".repeat(727)),
        ("cyrillic_8000_chars", "Привет как дела ".repeat(500)),
        (
            "letter_spaced_8000_chars",
            "a b c d e f g h i j k l m n o p q r s t u v w x y z ".repeat(153),
        ),
        ("zero_width_8000_chars", "abc\u{200B}".repeat(2000)),
        ("shell_8000_chars", "rm -rf / ; ".repeat(727)),
    ];
    let mut group = c.benchmark_group("parser_hostile");
    group.throughput(Throughput::Elements(1));
    for (name, text) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| black_box(madre_parser::parse(black_box(text))))
        });
    }
    group.finish();
}

criterion_group!(benches, parse, hostile);
criterion_main!(benches);
