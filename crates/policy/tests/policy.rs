//! Classification tables, policy files, roles, principals and the
//! confirmation-token state machine of SPEC §5.

use chrono::{Duration, TimeZone, Utc};
use madre_models::{Dsl, Module, RiskLevel};
use madre_policy::*;
use secrecy::SecretString;
use std::collections::HashSet;

fn check(target: &str, action: &str, expected: Decision) {
    assert_eq!(
        RiskTables::default().classify(target, action),
        expected,
        "classify({target}, {action})"
    );
}

const LOW: Decision = Decision::Risk(RiskLevel::Low);
const MED: Decision = Decision::Risk(RiskLevel::Med);
const HIGH: Decision = Decision::Risk(RiskLevel::High);

#[test]
fn classification_table() {
    // the original's expectations, but for the last rule: an action no table
    // names is MED (SPEC §5 "else MED"): its payload goes to the module
    // unread, so only the allowlist is known to be harmless
    check("audio", "mix", MED);
    check("system", "healthcheck", MED);
    check("shub", "suspend", MED);
    check("storage", "delete", HIGH);
    check("system", "delete", HIGH);
    check("madre", "delete", Decision::Deny);
    check("tentaculo_link", "stop", Decision::Deny);
    // deny rule covers exactly its actions on exactly its targets
    for action in ["delete", "stop", "kill", "destroy", "terminate", "wipe"] {
        check("madre", action, Decision::Deny);
        check("tentaculo_link", action, Decision::Deny);
        check("hermes", action, HIGH);
    }
    check("madre", "restart", MED);
    check("madre", "status", LOW);
    check("madre", "reset", HIGH);
    // allowlist wins over everything but the deny rule
    for action in ["status", "health", "read", "list", "analyze"] {
        check("hermes", action, LOW);
        check("madre", action, LOW);
    }
    for action in ["drop", "reset", "migrate", "restore", "truncate", "erase"] {
        check("switch", action, HIGH);
    }
    for action in ["restart", "reboot", "suspend", "cleanup", "patch", "update"] {
        check("switch", action, MED);
    }
    for action in [
        "chat",
        "help",
        "mix",
        "render",
        "Describe",
        "run",
        "anything",
        "frobnicate",
        "drain",
        "cordon",
        "transfer",
    ] {
        check("general", action, MED);
    }
    // case-insensitive
    check("MADRE", "DELETE", Decision::Deny);
    check(" Shub ", "Suspend", MED);
}

fn dsl(domain: &str, action: &str, targets: &[Module]) -> Dsl {
    Dsl {
        domain: domain.into(),
        action: action.into(),
        parameters: Default::default(),
        targets: targets.to_vec(),
        confidence: 0.3,
        original_text: String::new(),
        warnings: vec![],
        source: madre_models::DslSource::Fallback,
        effect: madre_models::Effect::Read,
    }
}

#[test]
fn intents_take_the_highest_risk_and_any_deny_denies() {
    let tables = RiskTables::default();
    // no target: classified by the domain and action alone
    let a = tables.assess(&dsl("system", "delete", &[]));
    assert_eq!(a.decision, HIGH);
    assert!(a.requires_confirmation() && !a.is_denied());

    let a = tables.assess(&dsl("general", "restart", &[Module::Switch]));
    assert_eq!((a.decision, a.requires_confirmation()), (MED, true));

    let a = tables.assess(&dsl("general", "status", &[Module::Hermes, Module::Switch]));
    assert_eq!((a.decision, a.requires_confirmation()), (LOW, false));

    let a = tables.assess(&dsl(
        "system",
        "stop",
        &[Module::Hermes, Module::TentaculoLink],
    ));
    assert!(a.is_denied());
    assert!(!a.requires_confirmation());
    assert_eq!(a.denied_target.as_deref(), Some("tentaculo_link"));
    assert_eq!(a.risk(), RiskLevel::High);
}

#[test]
fn policy_file_replaces_given_lists_and_rejects_bad_files() {
    let tables = RiskTables::from_toml_str("high = [\"deploy\"]\nmed = []\n").unwrap();
    assert_eq!(tables.classify("hermes", "deploy"), HIGH);
    assert_eq!(
        tables.classify("hermes", "restart"),
        MED,
        "med replaced by an empty list: restart is no longer named, and an unnamed action is MED"
    );
    assert_eq!(
        tables.classify("madre", "delete"),
        Decision::Deny,
        "deny lists kept"
    );

    let err = RiskTables::from_toml_str("high = \"delete\"").unwrap_err();
    assert!(matches!(err, PolicyError::Parse(_)), "{err}");
    let err = RiskTables::from_toml_str("hgh = [\"delete\"]").unwrap_err();
    assert!(err.to_string().contains("hgh"), "unknown key named: {err}");
    let err = RiskTables::from_toml_str("med = [\"Restart Now\"]").unwrap_err();
    assert!(
        matches!(err, PolicyError::BadWord { list: "med", .. }),
        "{err}"
    );
    let err = RiskTables::load(std::path::Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/policy.toml"));
}

#[test]
fn roles_order_and_who_may_confirm() {
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    assert!(!Role::Viewer.may_confirm(RiskLevel::Med));
    assert!(Role::Operator.may_confirm(RiskLevel::Med));
    assert!(!Role::Operator.may_confirm(RiskLevel::High));
    assert!(Role::Admin.may_confirm(RiskLevel::High));
    assert!(Role::Admin.at_least(Role::Viewer));
    assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
    assert!("root".parse::<Role>().is_err());
}

#[test]
fn principals_authenticate_by_hash_only() {
    let alice_hash = TokenHash::of("alice-secret").to_hex();
    let file = format!(
        "[[principal]]\nname = \"alice\"\nrole = \"operator\"\ntoken_sha256 = \"{alice_hash}\"\n\n\
         [[principal]]\nname = \"bob\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n",
        TokenHash::of("bob-secret").to_hex()
    );
    let principals = Principals::new()
        .with_token("admin", Role::Admin, &SecretString::from("root-token"))
        .with_toml_str(&file)
        .unwrap();
    assert_eq!(principals.len(), 3);
    assert_eq!(
        principals.authenticate("alice-secret").unwrap().role,
        Role::Operator
    );
    assert_eq!(principals.authenticate("bob-secret").unwrap().name, "bob");
    assert_eq!(
        principals.authenticate("root-token").unwrap().role,
        Role::Admin
    );
    for wrong in [
        "",
        "alice",
        "Alice-secret",
        " alice-secret",
        "alice-secret ",
        &alice_hash,
    ] {
        assert!(
            principals.authenticate(wrong).is_none(),
            "{wrong:?} must not authenticate"
        );
    }

    let bad = "[[principal]]\nname = \"x\"\nrole = \"operator\"\ntoken_sha256 = \"abc\"\n";
    assert!(matches!(
        Principals::new().with_toml_str(bad),
        Err(PrincipalsError::BadHash { .. })
    ));
    let bad_role =
        format!("[[principal]]\nname = \"x\"\nrole = \"root\"\ntoken_sha256 = \"{alice_hash}\"\n");
    assert!(matches!(
        Principals::new().with_toml_str(&bad_role),
        Err(PrincipalsError::Parse(_))
    ));
    let dup = format!(
        "{file}\n[[principal]]\nname = \"alice\"\nrole = \"admin\"\ntoken_sha256 = \"{alice_hash}\"\n"
    );
    assert!(matches!(
        Principals::new().with_toml_str(&dup),
        Err(PrincipalsError::Duplicate { .. })
    ));
}

#[test]
fn tokens_are_long_url_safe_unique_and_never_printed() {
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let token = ConfirmToken::generate().unwrap();
        let text = token.expose().to_owned();
        assert!(text.len() >= 22);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{text}"
        );
        assert!(!format!("{token:?}").contains(&text));
        assert!(seen.insert(text));
    }
    let a = ConfirmToken::generate().unwrap();
    let b = ConfirmToken::generate().unwrap();
    assert!(
        !a.hash().matches(b.expose()),
        "two tokens never verify against each other"
    );
    assert!(!b.hash().matches(a.expose()));
    assert!(a.hash().matches(a.expose()));
    // the stored form is the SHA-256 hex, and it round-trips
    let hex = a.hash().to_hex();
    assert_eq!(hex.len(), 64);
    assert!(!hex.contains(a.expose()));
    assert_eq!(TokenHash::from_hex(&hex).unwrap(), a.hash());
    assert!(TokenHash::from_hex("zz").is_err());
}

fn record(token: &ConfirmToken) -> ConfirmationRecord {
    ConfirmationRecord {
        token_hash: token.hash(),
        risk: RiskLevel::High,
        expires_at: Utc.with_ymd_and_hms(2026, 1, 1, 12, 10, 0).unwrap(),
        used_at: None,
        failed_attempts: 0,
    }
}

#[test]
fn confirmation_state_machine() {
    let token = ConfirmToken::from_entropy([7; 32]);
    let before = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let mut rec = record(&token);

    assert_eq!(
        check_confirmation(&rec, token.expose(), before),
        Verdict::Accepted
    );
    assert_eq!(
        check_confirmation(&rec, token.expose(), rec.expires_at),
        Verdict::Expired
    );
    assert_eq!(
        check_confirmation(&rec, "wrong", rec.expires_at + Duration::seconds(1)),
        Verdict::Expired
    );

    // wrong tries count up to the fifth, which voids the confirmation
    for n in 1..=MAX_FAILED_ATTEMPTS {
        let v = check_confirmation(&rec, "wrong", before);
        assert_eq!(
            v,
            Verdict::Rejected {
                failed_attempts: n,
                now_void: n == MAX_FAILED_ATTEMPTS
            }
        );
        rec.failed_attempts = n;
    }
    assert_eq!(
        check_confirmation(&rec, token.expose(), before),
        Verdict::Void,
        "even the right token"
    );

    // single use
    let mut rec = record(&token);
    rec.used_at = Some(before);
    assert_eq!(
        check_confirmation(&rec, token.expose(), before),
        Verdict::AlreadyUsed
    );
}
