//! `affinity train`, `affinity models` and `affinity jobs`: the retrain pipeline and the
//! model registry from the command line, as tables or JSON.

use affinity_service::retrain::{
    Outcome, RetrainRequest, TrainParams, TuneRequest, VersionMetrics, VersionParams, versions,
};
use affinity_store::{JobId, JobRecord, ModelVersionId, Stores, TenantId};
use anyhow::{Context, Result};
use clap::Subcommand;

use crate::{f4, table};

#[derive(clap::Args)]
pub(crate) struct TrainArgs {
    /// Promote even if the gate rejects the candidate (recorded in the registry).
    #[arg(long)]
    force: bool,
    /// Idempotency key: re-running with the same id never trains or flips twice.
    #[arg(long)]
    job_id: Option<String>,
    /// Search hyperparameters first, for at most this many seconds.
    #[arg(long)]
    tune_budget: Option<u64>,
    /// Embedding dimension.
    #[arg(long)]
    factors: Option<usize>,
    /// ALS iterations.
    #[arg(long)]
    iterations: Option<usize>,
    /// L2 regularisation.
    #[arg(long)]
    regularization: Option<f32>,
    /// Confidence scale.
    #[arg(long)]
    alpha: Option<f32>,
    /// Half-life of a purchase's weight, in days.
    #[arg(long)]
    half_life_days: Option<f64>,
}

#[derive(Subcommand)]
pub(crate) enum ModelsCmd {
    /// Versions, newest first, with their holdout metrics and gate decisions.
    List {
        /// At most this many.
        #[arg(long, default_value_t = versions::DEFAULT_LIST_LIMIT)]
        limit: usize,
    },
    /// One version in full: parameters, data, metrics, gate decision.
    Show {
        /// Version id.
        version: String,
    },
    /// Make a version live (its artifact is verified first).
    Promote {
        /// Version id.
        version: String,
        /// Allow a version the gate rejected.
        #[arg(long)]
        force: bool,
    },
    /// Put the previously live version back.
    Rollback,
}

#[derive(Subcommand)]
pub(crate) enum JobsCmd {
    /// A retrain job's status and message.
    Show {
        /// Job id.
        job_id: String,
    },
}

pub(crate) fn request(tenant: &TenantId, a: TrainArgs) -> Result<RetrainRequest> {
    Ok(RetrainRequest {
        tenant: tenant.clone(),
        job_id: a.job_id.map(JobId::parse).transpose().context("--job-id")?,
        force: a.force,
        params: TrainParams {
            factors: a.factors,
            iterations: a.iterations,
            regularization: a.regularization,
            alpha: a.alpha,
            half_life_days: a.half_life_days,
            ..TrainParams::default()
        },
        tune: a
            .tune_budget
            .map(|budget_seconds| TuneRequest { budget_seconds }),
    })
}

pub(crate) fn print_outcome(o: &Outcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(o)?);
        return Ok(());
    }
    let what = if o.replayed {
        "job already finished"
    } else if o.resumed {
        "job resumed"
    } else {
        "retrained"
    };
    println!(
        "{what}: version {} {} ({} purchases, {} customers, {} items)",
        o.version,
        o.verdict.as_str(),
        o.counts.purchases,
        o.counts.customers,
        o.counts.items
    );
    println!("gate: {}", o.reason);
    let e = &o.evaluation;
    let k = e.k;
    let mut t = table(&[
        "model",
        &format!("recall@{k}"),
        &format!("NDCG@{k}"),
        &format!("hit rate@{k}"),
        "coverage",
    ]);
    let mut row = |name: String, m: &affinity_model::eval::Metrics| {
        t.add_row(vec![
            name,
            f4(m.recall),
            f4(m.ndcg),
            f4(m.hit_rate),
            f4(m.coverage),
        ]);
    };
    row(format!("candidate {}", o.version), &e.candidate);
    if let Some(l) = &e.live {
        row(format!("live {}", l.version), &l.metrics);
    }
    row("popularity".into(), &e.popularity);
    if e.customers == 0 {
        println!("holdout: no customers to evaluate on");
    } else {
        println!("holdout: {} customers\n{t}", e.customers);
    }
    match &o.live {
        Some(v) => println!("live now: {v}"),
        None => println!("no model is live"),
    }
    if !o.timings.is_empty() {
        let steps: Vec<String> = o
            .timings
            .iter()
            .map(|s| format!("{} {:.2}s", s.step, s.seconds))
            .collect();
        println!("steps: {}", steps.join(", "));
    }
    Ok(())
}

pub(crate) async fn run(
    stores: &Stores,
    tenant: &TenantId,
    cmd: ModelsCmd,
    json: bool,
) -> Result<()> {
    match cmd {
        ModelsCmd::List { limit } => {
            let reg = versions::list(stores, tenant, limit).await?;
            if json {
                println!("{}", serde_json::to_string(&reg)?);
                return Ok(());
            }
            if reg.versions.is_empty() {
                println!("no model versions yet: run `affinity train`");
                return Ok(());
            }
            let mut t = table(&[
                "version",
                "status",
                "created",
                "recall@10",
                "NDCG@10",
                "vs live",
                "popularity",
                "purchases",
                "reason",
            ]);
            for v in &reg.versions {
                let e = &v.entry;
                let m = VersionMetrics::of(e).ok();
                let status = if v.live {
                    "live *".to_owned()
                } else {
                    e.status.as_str().to_owned()
                };
                let metric = |f: fn(&VersionMetrics) -> Option<String>| {
                    m.as_ref().and_then(f).unwrap_or_else(|| "-".into())
                };
                t.add_row(vec![
                    e.version.to_string(),
                    status,
                    e.created_at.format("%Y-%m-%d %H:%M").to_string(),
                    metric(|m| Some(f4(m.evaluation.candidate.recall))),
                    metric(|m| Some(f4(m.evaluation.candidate.ndcg))),
                    metric(|m| {
                        m.evaluation
                            .live
                            .as_ref()
                            .map(|l| format!("{} / {}", f4(l.metrics.recall), f4(l.metrics.ndcg)))
                    }),
                    metric(|m| Some(f4(m.evaluation.popularity.recall))),
                    e.data_counts.purchases.to_string(),
                    affinity_service::error::clip_to(e.reason.as_deref().unwrap_or(""), 70),
                ]);
            }
            println!("{t}");
        }
        ModelsCmd::Show { version } => {
            let v = versions::show(stores, tenant, &ModelVersionId::parse(version)?).await?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(());
            }
            let e = &v.entry;
            let mut t = table(&["field", "value"]);
            t.add_row(vec!["version".into(), e.version.to_string()]);
            t.add_row(vec![
                "status".into(),
                if v.live {
                    "live (serving now)".to_owned()
                } else {
                    e.status.as_str().to_owned()
                },
            ]);
            t.add_row(vec!["created".into(), e.created_at.to_rfc3339()]);
            t.add_row(vec!["artifact".into(), e.artifact_key.to_string()]);
            t.add_row(vec!["sha256".into(), e.checksum.clone()]);
            t.add_row(vec![
                "data".into(),
                format!(
                    "{} purchases, {} customers, {} items",
                    e.data_counts.purchases, e.data_counts.customers, e.data_counts.items
                ),
            ]);
            if let Ok(p) = serde_json::from_value::<VersionParams>(e.params.clone()) {
                let a = &p.config.als;
                t.add_row(vec!["job".into(), p.job_id.clone()]);
                t.add_row(vec![
                    "parameters".into(),
                    format!(
                        "{} factors, {} iterations, regularization {}, alpha {}, half-life {}",
                        a.factors,
                        a.iterations,
                        a.regularization,
                        a.alpha,
                        p.config
                            .weighting
                            .half_life_days
                            .map_or("none".into(), |d| format!("{d} days"))
                    ),
                ]);
                if let Some(tu) = &p.tuning {
                    t.add_row(vec![
                        "tuning".into(),
                        format!("{} configurations in {:.1}s", tu.tried, tu.seconds),
                    ]);
                }
            }
            if let Ok(m) = VersionMetrics::of(e) {
                let ev = &m.evaluation;
                let line = |x: &affinity_model::eval::Metrics| {
                    format!(
                        "recall {} NDCG {} hit rate {} coverage {}",
                        f4(x.recall),
                        f4(x.ndcg),
                        f4(x.hit_rate),
                        f4(x.coverage)
                    )
                };
                t.add_row(vec![
                    "holdout".into(),
                    format!("{} customers, {:?}, k = {}", ev.customers, ev.holdout, ev.k),
                ]);
                t.add_row(vec!["candidate".into(), line(&ev.candidate)]);
                if let Some(l) = &ev.live {
                    t.add_row(vec![format!("live {}", l.version), line(&l.metrics)]);
                }
                t.add_row(vec!["popularity".into(), line(&ev.popularity)]);
                t.add_row(vec![
                    "gate".into(),
                    format!(
                        "{}{} (tolerance {}%)",
                        m.gate.verdict.as_str(),
                        if m.gate.forced {
                            ", force requested"
                        } else {
                            ""
                        },
                        m.gate.tolerance * 100.0
                    ),
                ]);
            }
            t.add_row(vec!["reason".into(), e.reason.clone().unwrap_or_default()]);
            println!("{t}");
        }
        ModelsCmd::Promote { version, force } => {
            let p =
                versions::promote(stores, tenant, &ModelVersionId::parse(version)?, force).await?;
            print_pointer("promoted", &p, json)?;
        }
        ModelsCmd::Rollback => {
            let p = versions::rollback(stores, tenant).await?;
            print_pointer("rolled back", &p, json)?;
        }
    }
    Ok(())
}

pub(crate) fn print_pointer(what: &str, p: &affinity_store::LivePointer, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(p)?);
    } else {
        println!(
            "{what}: {} is live (previous: {})",
            p.version,
            p.previous.as_ref().map_or("none", |v| v.as_str())
        );
    }
    Ok(())
}

pub(crate) fn print_job(job: &JobRecord, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(job)?);
        return Ok(());
    }
    let mut t = table(&["field", "value"]);
    t.add_row(vec!["job".into(), job.job_id.to_string()]);
    t.add_row(vec!["status".into(), job.status.as_str().to_owned()]);
    t.add_row(vec!["started".into(), job.started_at.to_rfc3339()]);
    t.add_row(vec![
        "finished".into(),
        job.finished_at.map_or("-".into(), |f| f.to_rfc3339()),
    ]);
    t.add_row(vec![
        "message".into(),
        job.message.clone().unwrap_or_default(),
    ]);
    println!("{t}");
    Ok(())
}
