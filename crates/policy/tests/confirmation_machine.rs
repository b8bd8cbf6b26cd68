//! The confirmation state machine under any sequence of confirm, cancel and
//! clock moves: a plan runs at most once, and only after the right token was
//! presented in time, before it was cancelled or voided.

use chrono::{Duration, TimeZone, Utc};
use madre_models::RiskLevel;
use madre_policy::{
    ConfirmToken, ConfirmationRecord, MAX_FAILED_ATTEMPTS, Verdict, check_confirmation,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Confirm { right: bool },
    Cancel,
    Wait { seconds: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|right| Op::Confirm { right }),
        1 => Just(Op::Cancel),
        2 => (0i64..400).prop_map(|seconds| Op::Wait { seconds }),
    ]
}

#[derive(Debug, PartialEq)]
enum Plan {
    Waiting,
    Ran,
    Cancelled,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_runs_a_plan_twice_or_without_its_token(ops in proptest::collection::vec(op(), 0..30)) {
        let token = ConfirmToken::from_entropy([3; 32]);
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut now = start;
        let mut record = ConfirmationRecord {
            token_hash: token.hash(),
            risk: RiskLevel::High,
            expires_at: start + Duration::seconds(600),
            used_at: None,
            failed_attempts: 0,
        };
        let mut plan = Plan::Waiting;
        let mut runs = 0;
        let mut wrong_tries = 0;
        for op in ops {
            match op {
                Op::Wait { seconds } => now += Duration::seconds(seconds),
                Op::Cancel => {
                    if plan == Plan::Waiting {
                        plan = Plan::Cancelled;
                    }
                }
                Op::Confirm { right } => {
                    if plan != Plan::Waiting {
                        continue; // the server answers 409 before checking tokens
                    }
                    let presented = if right { token.expose().to_owned() } else { "guess".to_owned() };
                    match check_confirmation(&record, &presented, now) {
                        Verdict::Accepted => {
                            prop_assert!(right, "accepted a wrong token");
                            prop_assert!(now < record.expires_at, "accepted after expiry");
                            prop_assert!(wrong_tries < MAX_FAILED_ATTEMPTS, "accepted after the confirmation was void");
                            record.used_at = Some(now);
                            plan = Plan::Ran;
                            runs += 1;
                        }
                        Verdict::Rejected { failed_attempts, now_void } => {
                            prop_assert!(!right);
                            wrong_tries += 1;
                            prop_assert_eq!(failed_attempts, wrong_tries);
                            record.failed_attempts = failed_attempts;
                            if now_void {
                                plan = Plan::Cancelled;
                            }
                        }
                        Verdict::Expired => {
                            prop_assert!(now >= record.expires_at);
                            plan = Plan::Cancelled;
                        }
                        Verdict::AlreadyUsed | Verdict::Void => plan = Plan::Cancelled,
                    }
                }
            }
        }
        prop_assert!(runs <= 1);
    }
}
