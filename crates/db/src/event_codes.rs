//! How a journal event's type is stored (schema 16): a small integer
//! instead of its name, about 12 bytes fewer an event (issue 25). The
//! names stay what every reader sees; only the column holds the codes.

use madre_models::EventType;

/// The journal's event types in the order of the integers they are
/// stored as (schema 16): type `n` is `EVENT_TYPES[n - 1]`. Stored rows
/// keep these numbers, so a new type only ever goes at the end.
const EVENT_TYPES: [EventType; 10] = [
    EventType::PlanCreated,
    EventType::PlanWaiting,
    EventType::ApprovalRecorded,
    EventType::PlanConfirmed,
    EventType::PlanRejected,
    EventType::PlanExpired,
    EventType::StepStarted,
    EventType::StepFinished,
    EventType::PlanFinished,
    EventType::PlanTakenOver,
];

/// The integer event type `t` is stored as.
pub(crate) fn type_code(t: EventType) -> i64 {
    EVENT_TYPES
        .iter()
        .position(|e| *e == t)
        .map_or(0, |i| i as i64 + 1)
}

/// The event type stored as `code`, when it is one.
pub(crate) fn type_of_code(code: i64) -> Option<EventType> {
    usize::try_from(code)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| EVENT_TYPES.get(i).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_its_own_code_and_reads_back() {
        let mut seen = std::collections::HashSet::new();
        for t in EVENT_TYPES {
            let code = type_code(t);
            assert!(code > 0 && seen.insert(code), "{t:?}");
            assert_eq!(type_of_code(code), Some(t));
        }
        for unknown in [0, -1, 11, i64::MAX] {
            assert_eq!(type_of_code(unknown), None);
        }
    }

    /// The upgrade to schema 16 converts stored names with the same codes.
    #[test]
    fn the_upgrade_gives_each_name_its_code() {
        for t in EVENT_TYPES {
            let when = format!("WHEN '{}' THEN {}", t.as_str(), type_code(t));
            assert!(crate::schema::MIGRATION_16.contains(&when), "{when}");
        }
    }
}
