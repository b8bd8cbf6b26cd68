//! Issue 20, "measure generalisation, not fit": leave one family out. For
//! each family of dangerous requests, the gate's lexicon is built without
//! the danger words that only that family's requests use (no other family
//! needs them), and the family's requests are parsed again. What still
//! waits is what the gate catches by the words other families brought and
//! by its rules: the effect of unknown verbs on systems, data, people,
//! money and access, commands, and the shape of the sentence.
//!
//! Run with `--nocapture` to print the table that docs/safety.md publishes.

mod safety_corpus;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use madre_models::RiskLevel;
use madre_parser::Lexicon;
use madre_policy::RiskTables;
use safety_corpus::{Expect, dangerous_families};

/// The mean recall the issue asks for, over the families.
const MEAN_RECALL_TARGET: f64 = 0.95;

struct Row {
    family: &'static str,
    cases: usize,
    own_words: usize,
    waits: usize,
    meets_label: usize,
}

fn leave_one_family_out() -> Vec<Row> {
    let builtin = Lexicon::builtin();
    let tables = RiskTables::default();
    let families: Vec<_> = dangerous_families().collect();
    let used: BTreeMap<&str, BTreeSet<String>> = families
        .iter()
        .map(|family| {
            let words = family
                .cases
                .iter()
                .flat_map(|(text, _)| builtin.danger_phrases(text))
                .collect();
            (family.name, words)
        })
        .collect();
    families
        .iter()
        .map(|family| {
            let others: HashSet<&String> = used
                .iter()
                .filter(|(name, _)| **name != family.name)
                .flat_map(|(_, words)| words)
                .collect();
            let own: HashSet<String> = used[family.name]
                .iter()
                .filter(|w| !others.contains(w))
                .cloned()
                .collect();
            let lexicon = builtin.without_danger_phrases(&own);
            let mut row = Row {
                family: family.name,
                cases: family.cases.len(),
                own_words: own.len(),
                waits: 0,
                meets_label: 0,
            };
            for (text, expect) in family.cases {
                let assessment = tables.assess(&lexicon.parse(text));
                let denied = assessment.is_denied();
                if denied || assessment.risk() >= RiskLevel::Med {
                    row.waits += 1;
                }
                let meets = match expect {
                    Expect::Deny => denied,
                    Expect::Min(min) => denied || assessment.risk() >= *min,
                };
                if meets {
                    row.meets_label += 1;
                }
            }
            row
        })
        .collect()
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

#[test]
fn each_family_is_caught_without_its_own_words() {
    let rows = leave_one_family_out();
    println!("| family | requests | own words removed | still wait | still meet their label |");
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {:.1} % | {:.1} % |",
            row.family,
            row.cases,
            row.own_words,
            percent(row.waits, row.cases),
            percent(row.meets_label, row.cases)
        );
    }
    let mean = |f: fn(&Row) -> usize| {
        rows.iter().map(|r| percent(f(r), r.cases)).sum::<f64>() / rows.len() as f64
    };
    let (waits, labels) = (mean(|r| r.waits), mean(|r| r.meets_label));
    println!(
        "| **mean over {} families** | | | **{waits:.1} %** | {labels:.1} % |",
        rows.len()
    );

    assert!(rows.len() >= 16, "the corpora have their families");
    assert!(
        rows.iter().map(|r| r.own_words).sum::<usize>() > 0,
        "some words are only one family's: the measurement removes something"
    );
    assert!(
        waits >= MEAN_RECALL_TARGET * 100.0,
        "mean leave-one-family-out recall {waits:.1} % is below {:.0} %",
        MEAN_RECALL_TARGET * 100.0
    );
}

#[test]
fn removing_a_word_only_removes_that_word() {
    let builtin = Lexicon::builtin();
    assert!(builtin.danger_phrases("wire the money").contains("wire"));
    let without: HashSet<String> = ["wire".to_owned()].into();
    let lexicon = builtin.without_danger_phrases(&without);
    assert!(!lexicon.danger_phrases("wire the money").contains("wire"));
    assert_eq!(
        lexicon.parse("delete the backups").action,
        "delete",
        "the other words stay"
    );
    assert!(builtin.danger_phrases("what a lovely poem").is_empty());
}
