//! The VX11 event bus (SPEC §15): Madre tells the gateway (tentaculo_link,
//! `POST /events/ingest`) when a plan starts waiting for approval and when
//! that wait ends, so the operator UI can show it. Best effort: sent in the
//! background with the delegator's one retry, never holding up the request
//! that caused it, and recorded in the plan's audit trail either way.

use chrono::{DateTime, Utc};
use madre_db::NewAction;
use madre_delegation::{Method, ModuleRequest};
use madre_models::{Module, RiskLevel};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Madre;

/// How the approval of a waiting plan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The approvals it needed are in; it runs.
    Confirmed,
    /// An approver refused it.
    Rejected,
    /// Nobody approved it in time.
    Expired,
}

impl Resolution {
    fn as_str(self) -> &'static str {
        match self {
            Resolution::Confirmed => "confirmed",
            Resolution::Rejected => "rejected",
            Resolution::Expired => "expired",
        }
    }
}

/// A plan that starts waiting, as the bus announces it.
pub(crate) struct Requested<'a> {
    pub(crate) plan_id: Uuid,
    pub(crate) risk: RiskLevel,
    /// What was asked, in a line.
    pub(crate) summary: &'a str,
    pub(crate) requested_by: &'a str,
    /// The confirm token: in the approve link only with
    /// `MADRE_APPROVAL_LINKS=on`.
    pub(crate) token: &'a str,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) approvals: u32,
    pub(crate) approvals_required: u32,
}

/// The longest summary sent (the request's text, cut).
const SUMMARY_CHARS: usize = 200;

impl Madre {
    /// Announces that a plan waits for approval (`madre.approval.requested`).
    pub(crate) fn publish_requested(&self, r: Requested<'_>) {
        let config = self.config();
        let mut approve_url = format!(
            "{}/ui/plans/{}",
            config.public_url.trim_end_matches('/'),
            r.plan_id
        );
        if config.approval_links {
            // In the fragment, which browsers never send to a server.
            approve_url.push_str("#token=");
            approve_url.push_str(r.token);
        }
        let summary: String = r.summary.chars().take(SUMMARY_CHARS).collect();
        self.publish(
            r.plan_id,
            "madre.approval.requested",
            json!({
                "plan_id": r.plan_id,
                "risk": r.risk,
                "summary": summary,
                "requested_by": r.requested_by,
                "approve_url": approve_url,
                "expires_at": r.expires_at,
                "approvals": r.approvals,
                "approvals_required": r.approvals_required,
            }),
        );
    }

    /// Announces a waiting plan again, with the fresh token an
    /// `Idempotency-Key` replay gave it: an approve link with the old one
    /// would only count as a wrong try.
    pub(crate) async fn publish_requested_again(
        &self,
        plan_id: Uuid,
        token: &str,
        expires_at: DateTime<Utc>,
    ) {
        let loaded = self
            .db
            .run_blocking(move |db| {
                Ok((
                    db.plan(plan_id)?,
                    db.confirmation(plan_id)?,
                    db.approvals(plan_id)?,
                ))
            })
            .await;
        let Ok((Some(stored), Some(row), approvers)) = loaded else {
            return;
        };
        let summary = match &stored.intent {
            Some(intent) => intent.dsl.original_text.clone(),
            None => format!("{} on {}", stored.meta.action, stored.meta.module),
        };
        self.publish_requested(Requested {
            plan_id,
            risk: row.risk,
            summary: &summary,
            requested_by: &row.principal,
            token,
            expires_at: Some(expires_at),
            approvals: approvers.len() as u32,
            approvals_required: self.tables().approvals.for_risk(row.risk).required,
        });
    }

    /// Announces how a plan's wait for approval ended
    /// (`madre.approval.resolved`).
    pub(crate) fn publish_resolved(
        &self,
        plan_id: Uuid,
        outcome: Resolution,
        by: Option<&str>,
        reason: Option<&str>,
    ) {
        let mut payload = json!({ "plan_id": plan_id, "outcome": outcome.as_str() });
        if let Some(by) = by {
            payload["by"] = json!(by);
        }
        if let Some(reason) = reason {
            payload["reason"] = json!(reason);
        }
        self.publish(plan_id, "madre.approval.resolved", payload);
    }

    /// Sends one event in the background and records the outcome as an
    /// audit row of the plan (module `tentaculo_link`, action `publish`).
    fn publish(&self, plan_id: Uuid, kind: &'static str, payload: Value) {
        let request = ModuleRequest {
            module: Module::TentaculoLink,
            method: Method::Post,
            path: "/events/ingest".into(),
            body: Some(json!({
                "source": "madre",
                "type": kind,
                "broadcast": true,
                "payload": payload,
            })),
            idempotency_key: Uuid::now_v7(),
            request_id: format!("bus-{plan_id}"),
        };
        let delegator = self.delegator.clone();
        let db = self.db.clone();
        tokio::spawn(async move {
            let reason = match delegator.call(&request).await {
                Ok(outcome) => format!("{kind} delivered (attempts: {})", outcome.attempts),
                Err(e) => {
                    tracing::warn!(%plan_id, event = kind, error = %e, "event bus: not delivered");
                    format!("{kind} not delivered: {}", e.code())
                }
            };
            let action = NewAction {
                module: Module::TentaculoLink.as_str().into(),
                action: "publish".into(),
                reason,
                principal: "madre".into(),
                plan_id: Some(plan_id),
                created_at: Utc::now(),
            };
            if let Err(e) = db.record_action(action).await {
                tracing::warn!(%plan_id, error = %e, "event bus: the audit row was not written");
            }
        });
    }
}
