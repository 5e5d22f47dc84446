//! What the retrain function is invoked with, turned into a [`RetrainRequest`]: an
//! EventBridge scheduled event, or a direct invocation carrying tenant, force flag,
//! parameters and job id (what `POST /v1/models:retrain` sends on Lambda).
//!
//! Idempotency under at-least-once delivery: a scheduled event's job id is derived from
//! the event id, a direct invocation without a job id from the Lambda request id; both stay
//! the same when Lambda retries the delivery.

use affinity_store::{JobId, TenantId};
use serde::Deserialize;

use super::{RetrainDeps, RetrainRequest, TrainParams, TuneRequest, run_once};
use crate::error::{Context, Error, Result};

/// A direct invocation's payload. Every field is optional; unknown ones are refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectInvocation {
    /// Tenant; the function's default tenant when absent.
    pub tenant: Option<String>,
    /// Idempotency key chosen by the caller.
    pub job_id: Option<String>,
    /// Promote even if the gate rejects.
    #[serde(default)]
    pub force: bool,
    /// Training parameter overrides.
    #[serde(default)]
    pub params: TrainParams,
    /// Hyperparameter search.
    pub tune: Option<TuneRequest>,
    /// Who asked (`api` when `POST /v1/models:retrain` invoked the function); logged.
    pub trigger: Option<String>,
}

/// The fields of an EventBridge event this function reads. (A scheduled rule's event
/// has more; they are ignored. A hand-written struct keeps the function free of the
/// full event-definitions crate for four fields.)
#[derive(Clone, Debug, Deserialize)]
struct EventBridgeEvent {
    id: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    source: String,
    #[serde(default)]
    detail: serde_json::Value,
}

/// Turns an invocation payload into a request. `fallback_job_id` is used when neither
/// the payload nor the event names a job (Lambda: derived from the request id).
pub fn request_from_payload(
    payload: serde_json::Value,
    default_tenant: &TenantId,
    fallback_job_id: &str,
) -> Result<RetrainRequest> {
    let invalid = |reason: String| Error::Invalid {
        field: "event".into(),
        reason,
    };
    let (direct, job_from_event) = if payload.get("detail-type").is_some() {
        let event: EventBridgeEvent = serde_json::from_value(payload)
            .map_err(|e| invalid(format!("not an EventBridge event: {e}")))?;
        tracing::info!(source = %event.source, detail_type = %event.detail_type, "scheduled retrain");
        // A rule may carry a direct invocation in its detail (tenant, force, params).
        let direct = match event.detail {
            serde_json::Value::Null => DirectInvocation::default(),
            serde_json::Value::Object(m) if m.is_empty() => DirectInvocation::default(),
            other => {
                serde_json::from_value(other).map_err(|e| invalid(format!("event detail: {e}")))?
            }
        };
        (direct, Some(format!("evt-{}", event.id)))
    } else {
        let direct: DirectInvocation =
            serde_json::from_value(payload).map_err(|e| invalid(e.to_string()))?;
        (direct, None)
    };
    if let Some(trigger) = &direct.trigger {
        tracing::info!(trigger = %crate::error::clip(trigger), "retrain requested");
    }
    let tenant = match direct.tenant {
        Some(t) => TenantId::parse(t).step("tenant")?,
        None => default_tenant.clone(),
    };
    let job = direct
        .job_id
        .or(job_from_event)
        .unwrap_or_else(|| fallback_job_id.to_owned());
    Ok(RetrainRequest {
        tenant,
        job_id: Some(JobId::parse(job).step("job_id")?),
        force: direct.force,
        params: direct.params,
        tune: direct.tune,
    })
}

/// Handles one invocation and answers with the outcome as JSON. A run refused because
/// another holds the tenant's lock answers `{"status": "skipped", ...}` instead of
/// failing, so Lambda does not retry into the running job.
pub async fn handle(
    deps: &RetrainDeps,
    payload: serde_json::Value,
    default_tenant: &TenantId,
    fallback_job_id: &str,
) -> Result<serde_json::Value> {
    let request = request_from_payload(payload, default_tenant, fallback_job_id)?;
    let job_id = request.job_id.clone();
    match run_once(deps, request).await {
        Ok(outcome) => serde_json::to_value(&outcome).map_err(|e| Error::Task {
            step: "encode the outcome",
            message: e.to_string(),
        }),
        Err(e @ Error::RetrainRunning { .. }) => {
            tracing::warn!(error = %e, "retrain skipped");
            Ok(serde_json::json!({
                "status": "skipped",
                "job_id": job_id,
                "reason": e.to_string(),
            }))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn default() -> TenantId {
        TenantId::default()
    }

    #[test]
    fn scheduled_events_take_their_job_id_from_the_event() {
        // The shape EventBridge delivers for a schedule rule.
        let event = json!({
            "version": "0",
            "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": "2026-11-23T02:00:00Z",
            "region": "eu-west-1",
            "resources": ["arn:aws:events:eu-west-1:123456789012:rule/affinity-retrain"],
            "detail": {}
        });
        let r = request_from_payload(event, &default(), "req-1").unwrap();
        assert_eq!(r.tenant, default());
        assert_eq!(
            r.job_id.unwrap().as_str(),
            "evt-53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"
        );
        assert!(!r.force);
    }

    #[test]
    fn event_detail_can_name_tenant_and_force() {
        let event = json!({
            "id": "e1", "detail-type": "Retrain", "source": "shop.admin",
            "detail": {"tenant": "shop-b", "force": true, "params": {"factors": 32}}
        });
        let r = request_from_payload(event, &default(), "req-1").unwrap();
        assert_eq!(r.tenant.as_str(), "shop-b");
        assert!(r.force);
        assert_eq!(r.params.factors, Some(32));
        assert_eq!(r.job_id.unwrap().as_str(), "evt-e1");
    }

    #[test]
    fn direct_invocations_carry_everything_or_fall_back() {
        let r = request_from_payload(
            json!({"tenant": "t1", "job_id": "job-7", "force": true, "tune": {"budget_seconds": 30}, "trigger": "api"}),
            &default(),
            "req-1",
        )
        .unwrap();
        assert_eq!(r.tenant.as_str(), "t1");
        assert_eq!(r.job_id.unwrap().as_str(), "job-7");
        assert_eq!(r.tune.unwrap().budget_seconds, 30);
        let r = request_from_payload(json!({}), &default(), "req-9").unwrap();
        assert_eq!(r.job_id.unwrap().as_str(), "req-9");
    }

    #[test]
    fn bad_payloads_are_refused_with_the_reason() {
        for bad in [
            json!({"tenant": "t", "forse": true}),
            json!({"tenant": 5}),
            json!({"tenant": ""}),
            json!({"params": {"factors": "many"}}),
            json!({"id": 3, "detail-type": "x", "source": "y"}),
            json!([1, 2]),
        ] {
            let e = request_from_payload(bad.clone(), &default(), "r").unwrap_err();
            assert!(
                matches!(e, Error::Invalid { .. } | Error::Store { .. }),
                "{bad}: {e}"
            );
        }
    }
}
