//! The fingerprint an approval is bound to (SPEC §15): what the plan will
//! do once approved, hashed, so an approver can say "this plan, exactly".

use madre_models::{Step, StepType};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of the canonical JSON (keys sorted, no spaces) of the steps
/// after the plan's confirmation gate: each step's type, payload, and
/// whether it blocks or is optional. Ids, status and times are left out:
/// they change while the plan is the same. `None` for a plan with no gate.
pub fn plan_fingerprint(steps: &[Step]) -> Option<String> {
    let gate = steps
        .iter()
        .position(|s| s.step_type == StepType::AwaitConfirmation)?;
    let after: Vec<_> = steps[gate + 1..]
        .iter()
        .map(|s| {
            json!({
                "type": s.step_type,
                "payload": s.payload,
                "blocking": s.blocking,
                "optional": s.optional,
            })
        })
        .collect();
    // serde_json's maps are sorted by key, so this text is canonical.
    let canonical = serde_json::Value::Array(after).to_string();
    Some(hex::encode(Sha256::digest(canonical.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use std::cell::Cell;
    use uuid::Uuid;

    thread_local!(static NEXT: Cell<u128> = const { Cell::new(1) });

    /// A step with an id and a time no other step has.
    fn step(step_type: StepType, payload: serde_json::Value) -> Step {
        let n = NEXT.with(|c| c.replace(c.get() + 1));
        let at = DateTime::from_timestamp(1_800_000_000 + n as i64, 0).unwrap();
        Step::new(Uuid::from_u128(n), step_type, payload, at)
    }

    #[test]
    fn the_same_work_has_the_same_fingerprint_and_other_work_another() {
        let plan = |target: &str| {
            vec![
                step(StepType::AwaitConfirmation, json!({})),
                step(
                    StepType::CallHermes,
                    json!({"prompt": "delete", "target": target}),
                ),
            ]
        };
        let a = plan_fingerprint(&plan("db")).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(
            Some(a.clone()),
            plan_fingerprint(&plan("db")),
            "ids and times do not count"
        );
        assert_ne!(Some(a), plan_fingerprint(&plan("backups")));
        assert_eq!(
            plan_fingerprint(&plan("db")[1..]),
            None,
            "no gate, no fingerprint"
        );
    }
}
