//! The records a plan is stored from and read back as: types only, shared
//! by the journal (which writes and folds them) and the repository modules
//! that store plans and their confirmations, so that none of those
//! modules imports another that imports it back.

use chrono::{DateTime, Utc};
use madre_models::{Intent, Module, Plan, RiskLevel};
use serde_json::Value;

use crate::DbError;
use crate::audit::NewAction;

/// What made a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// A chat message (v7 `/madre/chat` or v6 `/chat`).
    Chat,
    /// A control action (`/madre/control`).
    Control,
    /// A programmatic v6 task (`/task`).
    Task,
}

impl PlanKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Chat => "chat",
            PlanKind::Control => "control",
            PlanKind::Task => "task",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, DbError> {
        match text {
            "chat" => Ok(PlanKind::Chat),
            "control" => Ok(PlanKind::Control),
            "task" => Ok(PlanKind::Task),
            other => Err(DbError::InvalidData(format!("unknown plan kind {other:?}"))),
        }
    }
}

/// Facts about a plan that are not part of [`Plan`] itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanMeta {
    /// What made it.
    pub kind: PlanKind,
    /// Short name (`chat`, the task's name, `control:shub:restart`).
    pub name: String,
    /// The module it mainly addresses.
    pub module: Module,
    /// The action it carries out.
    pub action: String,
    /// Who asked for it.
    pub principal: String,
}

/// A plan as stored, with its metadata and intent.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// The plan and its steps.
    pub plan: Plan,
    /// Its metadata.
    pub meta: PlanMeta,
    /// The intent it carries out.
    pub intent: Option<Intent>,
    /// The plan's overall result, once finished.
    pub result: Option<Value>,
}

/// Everything written when a plan is created, in one transaction.
#[derive(Debug, Clone)]
pub struct NewPlanRecord {
    /// The plan with its steps.
    pub plan: Plan,
    /// Its metadata.
    pub meta: PlanMeta,
    /// The intent, stored in the plan's context.
    pub intent: Option<Intent>,
    /// A pending confirmation, when the plan waits for one.
    pub confirmation: Option<NewConfirmation>,
    /// Audit rows to append with it.
    pub actions: Vec<NewAction>,
    /// The request's message as the intent log holds it for the plan's
    /// intent, if it does: the plan's body refers to it there rather than
    /// storing it again (issue 25: each payload once).
    pub logged_message: Option<String>,
}

/// A confirmation to store with its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConfirmation {
    /// Hex SHA-256 of the issued token (never the token).
    pub token_sha256: String,
    /// The plan's risk, which decides who may confirm.
    pub risk: RiskLevel,
    /// When the token stops being valid.
    pub expires_at: DateTime<Utc>,
    /// Who asked for the plan.
    pub principal: String,
}
