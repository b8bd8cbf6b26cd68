//! Approval rules by risk (SPEC §15): how many distinct principals must
//! approve a waiting plan, whether the requester may be one of them, which
//! roles may approve, and whether an approval needs a reason. From the
//! policy file's `[approvals.MED]` and `[approvals.HIGH]`; the defaults are
//! one approval by an operator or admin for MED and by an admin for HIGH,
//! self-approval allowed and no reason needed.

use madre_models::RiskLevel;
use serde::Deserialize;

use crate::Role;

/// The most approvals a rule may require.
pub const MAX_REQUIRED_APPROVALS: u32 = 10;

/// The rule for plans of one risk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// Distinct principals who must approve (1 to [`MAX_REQUIRED_APPROVALS`]).
    pub required: u32,
    /// May the principal who made the request approve it?
    pub self_approval: bool,
    /// The roles that may approve (operator, admin).
    pub roles: Vec<Role>,
    /// Must an approval or a rejection say why?
    pub reason_required: bool,
}

/// A rule as the file gives it: what it leaves out stays as the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleInFile {
    required: Option<u32>,
    self_approval: Option<bool>,
    roles: Option<Vec<Role>>,
    reason_required: Option<bool>,
}

impl RuleInFile {
    fn over(self, default: ApprovalRule) -> ApprovalRule {
        ApprovalRule {
            required: self.required.unwrap_or(default.required),
            self_approval: self.self_approval.unwrap_or(default.self_approval),
            roles: self.roles.unwrap_or(default.roles),
            reason_required: self.reason_required.unwrap_or(default.reason_required),
        }
    }
}

/// `[approvals]` as the file gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesInFile {
    #[serde(rename = "MED", default)]
    med: RuleInFile,
    #[serde(rename = "HIGH", default)]
    high: RuleInFile,
}

impl From<RulesInFile> for ApprovalRules {
    fn from(file: RulesInFile) -> Self {
        Self {
            med: file.med.over(med()),
            high: file.high.over(high()),
        }
    }
}

impl ApprovalRule {
    fn default_for(roles: &[Role]) -> Self {
        Self {
            required: 1,
            self_approval: true,
            roles: roles.to_vec(),
            reason_required: false,
        }
    }

    /// True when `role` may approve under this rule.
    pub fn allows(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// What is wrong with the rule, if anything.
    fn problem(&self) -> Option<String> {
        if !(1..=MAX_REQUIRED_APPROVALS).contains(&self.required) {
            return Some(format!(
                "required must be 1 to {MAX_REQUIRED_APPROVALS}, not {}",
                self.required
            ));
        }
        if self.roles.is_empty() {
            return Some("roles must name at least one role".into());
        }
        if self.roles.contains(&Role::Viewer) {
            return Some("a viewer cannot approve: roles may be operator and admin".into());
        }
        None
    }
}

/// The rules for MED and HIGH plans (LOW plans never wait).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RulesInFile")]
pub struct ApprovalRules {
    /// `[approvals.MED]`.
    pub med: ApprovalRule,
    /// `[approvals.HIGH]`.
    pub high: ApprovalRule,
}

fn med() -> ApprovalRule {
    ApprovalRule::default_for(&[Role::Operator, Role::Admin])
}
fn high() -> ApprovalRule {
    ApprovalRule::default_for(&[Role::Admin])
}

impl Default for ApprovalRules {
    fn default() -> Self {
        Self {
            med: med(),
            high: high(),
        }
    }
}

impl ApprovalRules {
    /// The rule for a plan of `risk` (a LOW plan that waits, which no
    /// planner makes, is held to MED's).
    pub fn for_risk(&self, risk: RiskLevel) -> &ApprovalRule {
        match risk {
            RiskLevel::High => &self.high,
            RiskLevel::Low | RiskLevel::Med => &self.med,
        }
    }

    /// The first rule that cannot be used, as `(risk, problem)`.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        [("MED", &self.med), ("HIGH", &self.high)]
            .into_iter()
            .find_map(|(risk, rule)| rule.problem().map(|p| (risk, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_one_approval_by_the_role_that_confirmed_before() {
        let rules = ApprovalRules::default();
        for (risk, role) in [
            (RiskLevel::Med, Role::Operator),
            (RiskLevel::High, Role::Admin),
        ] {
            let rule = rules.for_risk(risk);
            assert_eq!(rule.required, 1);
            assert!(rule.self_approval && !rule.reason_required);
            for r in [Role::Viewer, Role::Operator, Role::Admin] {
                assert_eq!(rule.allows(r), r.may_confirm(risk), "{risk} {r:?}");
            }
            assert_eq!(role, Role::required_to_confirm(risk));
        }
    }

    #[test]
    fn a_file_sets_what_it_names_and_keeps_the_rest() {
        let tables = crate::RiskTables::from_toml_str(
            "[approvals.HIGH]\nrequired = 2\nself_approval = false\n",
        )
        .unwrap();
        let high = &tables.approvals.high;
        assert_eq!((high.required, high.self_approval), (2, false));
        assert_eq!(high.roles, [Role::Admin]);
        assert_eq!(tables.approvals.med, ApprovalRules::default().med);
    }

    #[test]
    fn rules_that_cannot_be_used_are_refused_by_name() {
        for (text, says) in [
            (
                "[approvals.MED]\nrequired = 0\n",
                "`approvals.MED`: required",
            ),
            (
                "[approvals.HIGH]\nrequired = 11\n",
                "`approvals.HIGH`: required",
            ),
            ("[approvals.HIGH]\nroles = []\n", "at least one role"),
            (
                "[approvals.MED]\nroles = [\"viewer\"]\n",
                "a viewer cannot approve",
            ),
            ("[approvals.LOW]\nrequired = 1\n", "unknown field"),
            ("[approvals.MED]\nquorum = 1\n", "unknown field"),
        ] {
            let err = crate::RiskTables::from_toml_str(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
