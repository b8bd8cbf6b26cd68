//! Properties of the parser over generated inputs.

use madre_parser::{DESTRUCTIVE_WARNING, parse};
use proptest::prelude::*;

const VERBS: &[&str] = &[
    "delete",
    "remove",
    "drop",
    "destroy",
    "kill",
    "terminate",
    "reset",
    "wipe",
    "truncate",
    "erase",
    "borrar",
    "eliminar",
    "destruir",
    "matar",
];
/// Words that belong to no family, no audio word and no module.
const FILLER: &[&str] = &[
    "the", "please", "now", "all", "data", "files", "my", "database", "todos", "los", "datos",
    "el", "sistema",
];

fn accent(c: char) -> char {
    match c {
        'a' => 'á',
        'e' => 'é',
        'i' => 'í',
        'o' => 'ó',
        'u' => 'ú',
        other => other,
    }
}

fn disguise(word: &str, upper: &[bool], accents: &[bool]) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            let c = if accents[i % accents.len()] {
                accent(c)
            } else {
                c
            };
            if upper[i % upper.len()] {
                c.to_uppercase().next().unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_is_deterministic(text in "\\PC{0,400}") {
        let a = parse(&text);
        prop_assert_eq!(&a, &parse(&text));
        prop_assert!(a.confidence == 0.3 || a.confidence == 0.9);
        prop_assert_eq!(a.original_text, text);
    }

    #[test]
    fn any_bytes_as_text_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }

    #[test]
    fn destructive_verbs_are_caught_in_any_disguise(
        verb in proptest::sample::select(VERBS),
        upper in proptest::collection::vec(any::<bool>(), 1..8),
        accents in proptest::collection::vec(any::<bool>(), 1..8),
        before in proptest::collection::vec(proptest::sample::select(FILLER), 0..4),
        after in proptest::collection::vec(proptest::sample::select(FILLER), 0..4),
        open in "[\"'¡¿(\\[*_ ]{0,3}",
        close in "[\"'!?.,;:)\\]* ]{0,3}",
    ) {
        let word = disguise(verb, &upper, &accents);
        let text = format!("{} {open}{word}{close} {}", before.join(" "), after.join(" "));
        let dsl = parse(&text);
        prop_assert_eq!(dsl.action.as_str(), "delete", "for {:?}", text);
        prop_assert_eq!(dsl.domain.as_str(), "system");
        prop_assert!(dsl.confidence >= 0.9);
        prop_assert!(dsl.warnings.iter().any(|w| w == DESTRUCTIVE_WARNING));
    }

    #[test]
    fn a_verb_glued_inside_a_longer_word_is_not_destructive(
        verb in proptest::sample::select(VERBS),
        prefix in "[b-z]{1,3}",
        suffix in "[b-z]{2,4}",
    ) {
        // "skill", "undeleted"-like words: the verb is only a substring.
        let word = format!("{prefix}{verb}{suffix}");
        prop_assume!(!VERBS.contains(&word.as_str()));
        let dsl = parse(&format!("please {word} now"));
        prop_assert_ne!(dsl.action.as_str(), "delete", "for {:?}", word);
    }
}
