//! The run: the locked part of a retrain as a sequence of small steps over one [`Run`]
//! context, plus the lock around it and the settling after it.

use std::collections::HashMap;

use affinity_store::Watermark;

use super::*;

/// Takes the tenant's lock; a refusal is recorded in the job.
pub(super) async fn take_lock(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    clock: &mut Clock,
) -> Result<Lease> {
    clock.start(Step::Lock, &deps.faults)?;
    match Lease::acquire(
        Arc::clone(&deps.stores.records),
        tenant,
        owner_for(job_id),
        deps.settings.lease,
    )
    .await
    {
        Ok(l) => Ok(l),
        Err(e @ Error::RetrainRunning { .. }) => {
            record_refusal(deps, tenant, job_id, &e).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

pub(super) async fn run(
    deps: &RetrainDeps,
    request: &RetrainRequest,
    job_id: JobId,
    config: TrainConfig,
) -> Result<Outcome> {
    let tenant = &request.tenant;
    if let Some(job) = finished_job(deps, tenant, &job_id).await? {
        tracing::info!("job already finished: answering from the registry");
        return replay(deps, tenant, &job).await;
    }
    let mut clock = Clock::new(deps.progress.clone());
    let lease = take_lock(deps, tenant, &job_id, &mut clock).await?;
    let result = match open_job(deps, tenant, &job_id).await {
        Ok(Opened::Finished(job)) => replay(deps, tenant, &job).await,
        Ok(Opened::Started(at)) => {
            let run = Run::new(deps, request, &job_id, &lease, &mut clock, at);
            locked(run, config).await
        }
        Err(e) => Err(e),
    };
    settle(deps, tenant, &job_id, lease, &mut clock, result).await
}

/// After the locked part: release the lock and record the job's end (a simulated crash
/// does neither, as a killed process would not).
pub(super) async fn settle(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    lease: Lease,
    clock: &mut Clock,
    result: Result<Outcome>,
) -> Result<Outcome> {
    match result {
        Ok(mut outcome) => {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "could not release the retrain lock; it will expire");
            }
            outcome.timings = clock.finish();
            tracing::info!(
                version = %outcome.version,
                verdict = outcome.verdict.as_str(),
                "retrain finished"
            );
            report_metrics(deps, tenant, true).await;
            Ok(outcome)
        }
        Err(e) => {
            let e = fail(deps, tenant, job_id, lease, e).await;
            if !e.is_crash() {
                report_metrics(deps, tenant, false).await;
            }
            Err(e)
        }
    }
}

/// The run's outcome and the live model's age (seconds since its registration), so the
/// model-age alarm has a figure after every scheduled run even when no request is served.
pub(super) async fn report_metrics(deps: &RetrainDeps, tenant: &TenantId, succeeded: bool) {
    if !deps.metrics.enabled() {
        return;
    }
    deps.metrics.retrain(succeeded);
    let records = &deps.stores.records;
    let live = match records.live_pointer(tenant).await {
        Ok(Some(p)) => records.get_model(tenant, &p.version).await.ok().flatten(),
        _ => None,
    };
    if let Some(v) = live {
        let age = (Utc::now() - v.created_at).num_milliseconds() as f64 / 1e3;
        deps.metrics.model_age(age);
    }
}

/// One run of the locked part: what it is for, its job, the lease it holds and its clock.
/// Every step starts with [`Run::enter`], so its timing, fault point and lease check live in
/// one place.
pub(super) struct Run<'a> {
    pub deps: &'a RetrainDeps,
    pub request: &'a RetrainRequest,
    pub job_id: &'a JobId,
    pub lease: &'a Lease,
    pub clock: &'a mut Clock,
    /// The version this job registers (derived from the job, so every attempt agrees).
    pub version: ModelVersionId,
}

impl<'a> Run<'a> {
    /// The run of `job_id`, started at `started_at` (an unfinished job resumed keeps its
    /// first start, so its version id stays the same).
    pub(super) fn new(
        deps: &'a RetrainDeps,
        request: &'a RetrainRequest,
        job_id: &'a JobId,
        lease: &'a Lease,
        clock: &'a mut Clock,
        started_at: DateTime<Utc>,
    ) -> Result<Self> {
        Ok(Self {
            deps,
            request,
            job_id,
            lease,
            clock,
            version: version_id(job_id, started_at)?,
        })
    }

    fn tenant(&self) -> &TenantId {
        &self.request.tenant
    }

    /// Starts `step`: its clock starts and is reported, its fault point fires, and a step
    /// that does lasting work checks that the lease is still held.
    fn enter(&mut self, step: Step) -> Result<()> {
        self.clock.start(step, &self.deps.faults)?;
        if step.checks_lease() {
            self.lease.check(step.as_str())?;
        }
        Ok(())
    }
}

/// The data a run trains and judges on, and the live model it is compared with.
struct Prepared {
    data: Arc<Interactions>,
    split: Arc<eval::Split>,
    categories: HashMap<String, String>,
    watermark: Watermark,
    holdout: HoldoutConfig,
    cut: Holdout,
    pointer: Option<LivePointer>,
    live: Option<(String, Model)>,
    live_note: Option<String>,
}

/// The candidate and how it did on the holdout.
struct Judged {
    candidate: model::Candidate,
    evaluation: Evaluation,
    curve: RecallCurve,
}

/// Everything done while holding the lock, after the job record is open: the steps in
/// order, each a function of its own below.
pub(super) async fn locked(run: Result<Run<'_>>, config: TrainConfig) -> Result<Outcome> {
    let run = &mut run?;
    if let Some(entry) = registered(run).await? {
        tracing::info!(version = %run.version, "version already registered: completing without training");
        let metrics = VersionMetrics::of(&entry)?;
        return conclude(run, entry, metrics, true).await;
    }
    let scanned = scan(run).await?;
    let mut prepared = interactions(run, scanned, &config).await?;
    let (config, tuning) = tune(run, &prepared, config).await?;
    let candidate = fit(run, &prepared, &config).await?;
    let judged = evaluate(run, candidate, &mut prepared).await?;
    let decision = decide(run, &judged.evaluation)?;
    let Judged {
        candidate,
        evaluation,
        curve,
    } = judged;
    let (model, counts, pairs) = train(run, candidate, prepared, &config, &evaluation).await?;
    let holdout = run.deps.settings.holdout.clone();
    insight(run, &model).await?;
    let (key, checksum) = artifact(run, model).await?;
    let params = VersionParams {
        config,
        job_id: run.job_id.to_string(),
        holdout,
        pairs,
        data_watermark: counts.1,
        tuning,
    };
    let metrics = VersionMetrics {
        evaluation,
        gate: decision,
        curve: Some(curve),
    };
    let entry = register(run, key, checksum, counts.0, &params, &metrics).await?;
    conclude(run, entry, metrics, false).await
}

/// The version, if an earlier attempt of this job registered it already.
async fn registered(run: &Run<'_>) -> Result<Option<ModelVersion>> {
    run.deps
        .stores
        .records
        .get_model(run.tenant(), &run.version)
        .await
        .step("read the model version")
}

/// Every purchase and the catalog, streamed into an interactions builder.
async fn scan(run: &mut Run<'_>) -> Result<training::Scanned> {
    run.enter(Step::Scan)?;
    let records = &run.deps.stores.records;
    // Customer rows an older deployment wrote under the tenant's one partition move to
    // their own (DynamoDB; a marker makes this one read once done).
    let moved = records
        .rekey_customers(run.tenant())
        .await
        .step("move customer rows to their own partitions")?;
    if moved > 0 {
        tracing::info!(moved, "customer rows moved to one partition per customer");
    }
    training::scan(
        records.as_ref(),
        run.tenant(),
        run.deps.settings.scan_segments,
    )
    .await
}

/// The interaction matrix and the holdout. The live model decides the holdout: judged on
/// purchases it never saw (those after its data watermark), it is compared fairly; before
/// the first model, each customer's latest purchases.
async fn interactions(
    run: &mut Run<'_>,
    scanned: training::Scanned,
    config: &TrainConfig,
) -> Result<Prepared> {
    run.enter(Step::Interactions)?;
    let tenant = run.tenant();
    let pointer = run
        .deps
        .stores
        .records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    let (live, live_note) = match &pointer {
        None => (None, None),
        Some(p) => match load_live_for_gate(&run.deps.stores, tenant, p).await {
            Ok(m) => (Some((p.version.to_string(), m)), None),
            Err(note) => {
                tracing::warn!(live = %p.version, note = %note, "live model not compared");
                (None, Some(note))
            }
        },
    };
    let holdout = run.deps.settings.holdout.clone();
    let cut = match &live {
        Some((_, m)) => Holdout::Since {
            at: m.manifest.data_watermark,
        },
        None => Holdout::Latest {
            fraction: holdout.fraction,
        },
    };
    let (data, split) = {
        let (builder, weighting, h) = (scanned.builder, config.weighting, holdout.clone());
        blocking("build interactions", move || {
            let data = builder.build(&weighting).step("build interactions")?;
            let split = eval::split_sample(&data, cut, h.max_customers, h.seed);
            Ok((Arc::new(data), Arc::new(split)))
        })
        .await?
    };
    Ok(Prepared {
        data,
        split,
        categories: scanned.categories,
        watermark: scanned.watermark,
        holdout,
        cut,
        pointer,
        live,
        live_note,
    })
}

/// The configuration, tuned on a validation split of the training part when asked.
async fn tune(
    run: &mut Run<'_>,
    prepared: &Prepared,
    config: TrainConfig,
) -> Result<(TrainConfig, Option<TuningSummary>)> {
    run.enter(Step::Tune)?;
    match &run.request.tune {
        None => Ok((config, None)),
        Some(t) => {
            let (split, budget, k) = (
                Arc::clone(&prepared.split),
                t.budget_seconds,
                prepared.holdout.k,
            );
            blocking("tune", move || tune_config(&split.train, config, budget, k)).await
        }
    }
}

/// The candidate, fitted without the holdout.
async fn fit(
    run: &mut Run<'_>,
    prepared: &Prepared,
    config: &TrainConfig,
) -> Result<model::Candidate> {
    run.enter(Step::Fit)?;
    let (split, cfg, v, p) = (
        Arc::clone(&prepared.split),
        config.clone(),
        run.version.to_string(),
        run.deps.progress.clone(),
    );
    blocking("fit the candidate", move || {
        let report = |s| report_stage(&p, Step::Fit, s);
        model::Trainer::new(&cfg)
            .version(&v)
            .progress(&report)
            .fit_candidate(&split.train)
            .step("fit the candidate")
    })
    .await
}

/// Candidate, live model and popularity on the same holdout: one ranking per scorer at the
/// largest cut-off gives the gate's k and the curve.
async fn evaluate(
    run: &mut Run<'_>,
    candidate: model::Candidate,
    prepared: &mut Prepared,
) -> Result<Judged> {
    run.enter(Step::Evaluate)?;
    let k = prepared.holdout.k;
    let split = Arc::clone(&prepared.split);
    let cut = prepared.cut;
    let live_pointer = prepared.pointer.as_ref().map(|p| p.version.to_string());
    let live_note = prepared.live_note.clone();
    // The live model is only needed here: it moves into the evaluation and is dropped after.
    let live = prepared.live.take();
    blocking("evaluate", move || {
        let ks = evaluation_ks(k);
        let cs = candidate.model.evaluate_at(&split, &ks);
        let ps = model::popularity_metrics_at(&split, &ks);
        let curve = recall_curve(&ks, &cs, &ps);
        let c = at_k(&ks, &cs, k);
        let live = live.map(|(version, m)| LiveEvaluation {
            version,
            metrics: m.evaluate(&split, k),
        });
        let evaluation = Evaluation {
            k,
            holdout: cut,
            customers: c.customers,
            candidate: c,
            popularity: at_k(&ks, &ps, k),
            live,
            live_pointer,
            live_note,
        };
        Ok(Judged {
            candidate,
            evaluation,
            curve,
        })
    })
    .await
}

/// Promotion, by the gate's rules.
fn decide(run: &mut Run<'_>, evaluation: &Evaluation) -> Result<GateDecision> {
    run.enter(Step::Gate)?;
    let decision = gate::decide(&run.deps.settings.gate, evaluation, run.request.force);
    tracing::info!(verdict = decision.verdict.as_str(), reason = %decision.reason, "gate");
    Ok(decision)
}

/// The served model on all the data (neighbours and index included), continuing the
/// candidate's fit; with the data counts and pairs for the registry.
async fn train(
    run: &mut Run<'_>,
    candidate: model::Candidate,
    prepared: Prepared,
    config: &TrainConfig,
    evaluation: &Evaluation,
) -> Result<(Model, (DataCounts, Option<DateTime<Utc>>), u64)> {
    run.enter(Step::Train)?;
    let Prepared {
        data,
        categories,
        watermark,
        ..
    } = prepared;
    let (d, cfg, v, p, metrics) = (
        Arc::clone(&data),
        config.clone(),
        run.version.to_string(),
        run.deps.progress.clone(),
        manifest_metrics(evaluation),
    );
    let trained_at = Utc::now().timestamp();
    let refit = run.deps.settings.refit_iterations;
    let model = blocking("train", move || {
        let report = |s| report_stage(&p, Step::Train, s);
        let trainer = model::Trainer::new(&cfg)
            .version(&v)
            .trained_at(trained_at)
            .progress(&report);
        let mut m = if refit > 0 {
            candidate.refit(&trainer, &d, &categories, refit)
        } else {
            drop(candidate);
            trainer.train(&d, &categories)
        }
        .step("train the final model")?;
        m.manifest.metrics = metrics;
        Ok(m)
    })
    .await?;
    let counts = DataCounts {
        purchases: watermark.count,
        customers: data.n_customers() as u64,
        items: data.n_items() as u64,
    };
    Ok((
        model,
        (counts, watermark.max_purchased_at),
        data.nnz() as u64,
    ))
}

/// Customer insight for the new version and its popularity fallback, beside the artifact.
async fn insight(run: &mut Run<'_>, model: &Model) -> Result<()> {
    run.enter(Step::Insight)?;
    let hasher = crate::customer_data::CustomerHasher::new(run.deps.settings.hash_key.clone());
    crm::write_snapshot(&run.deps.stores, run.tenant(), model, &hasher).await?;
    crate::fallback::write(&run.deps.stores, run.tenant(), model).await
}

/// The artifact, under its content address: (key, checksum).
async fn artifact(run: &mut Run<'_>, model: Model) -> Result<(BlobKey, String)> {
    run.enter(Step::Artifact)?;
    let (bytes, checksum) = blocking("serialise the artifact", move || {
        let bytes = model.to_bytes().step("serialise the artifact")?;
        let checksum = digest(&bytes);
        Ok((bytes, checksum))
    })
    .await?;
    let key = training::artifact_key(&checksum)?;
    run.deps
        .stores
        .blobs
        .put(run.tenant(), &key, bytes)
        .await
        .step("write the artifact")?;
    Ok((key, checksum))
}

/// The version in the registry: a candidate if the gate let it through, else rejected.
async fn register(
    run: &mut Run<'_>,
    key: BlobKey,
    checksum: String,
    counts: DataCounts,
    params: &VersionParams,
    metrics: &VersionMetrics,
) -> Result<ModelVersion> {
    run.enter(Step::Register)?;
    let entry = ModelVersion {
        version: run.version.clone(),
        created_at: affinity_store::normalize_time(Utc::now()),
        status: if metrics.gate.verdict.goes_live() {
            ModelStatus::Candidate
        } else {
            ModelStatus::Rejected
        },
        artifact_key: key,
        checksum,
        params: to_json("params", params)?,
        metrics: to_json("metrics", metrics)?,
        data_counts: counts,
        reason: Some(clip(&metrics.gate.reason)),
    };
    run.deps
        .stores
        .records
        .register_model(run.tenant(), &entry)
        .await
        .step("register the version")?;
    Ok(entry)
}

/// Flip (if the gate says so and it has not happened yet) and finish the job. Shared by a
/// full run and a resumed one, so a retried job never flips twice.
pub(super) async fn conclude(
    run: &mut Run<'_>,
    entry: ModelVersion,
    metrics: VersionMetrics,
    resumed: bool,
) -> Result<Outcome> {
    run.enter(Step::Flip)?;
    let (deps, tenant, job_id) = (run.deps, &run.request.tenant, run.job_id);
    let records = &deps.stores.records;
    let mut pointer = records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    let mut replaced = None;
    let already_live = pointer.as_ref().is_some_and(|p| p.version == entry.version);
    if already_live {
        if let Some(p) = &pointer {
            // An earlier attempt flipped and died before tidying up: only the statuses.
            versions::settle_statuses(&deps.stores, tenant, p, None).await?;
        }
    } else if metrics.gate.verdict.goes_live() && entry.status == ModelStatus::Candidate {
        run.lease.renew("flip").await?;
        let expected = metrics
            .evaluation
            .live_pointer
            .as_deref()
            .map(ModelVersionId::parse)
            .transpose()
            .step("live version id")?;
        let flipped = versions::flip(
            &deps.stores,
            tenant,
            expected.as_ref(),
            &entry.version,
            clip(&metrics.gate.reason),
        )
        .await?;
        replaced = flipped.previous.clone();
        pointer = Some(flipped);
    }

    run.enter(Step::Release)?;
    let verdict = metrics.gate.verdict;
    let done = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Succeeded,
        started_at: Utc::now(),
        finished_at: Some(Utc::now()),
        message: Some(clip(&format!(
            "{} {}: {}",
            verdict.as_str(),
            entry.version,
            metrics.gate.reason
        ))),
    };
    finish_job(deps, tenant, done).await?;
    let mut outcome = outcome_of(tenant, job_id, entry, metrics, pointer)?;
    outcome.replaced = replaced;
    outcome.resumed = resumed;
    Ok(outcome)
}

/// Loads the live model for the gate. Errors that mean "this artifact is unusable" become
/// a note (the candidate is then compared with popularity only, and the note is
/// recorded); a store outage fails the run instead of weakening the gate.
pub(super) async fn load_live_for_gate(
    stores: &Stores,
    tenant: &TenantId,
    pointer: &LivePointer,
) -> std::result::Result<Model, String> {
    let entry = match stores.records.get_model(tenant, &pointer.version).await {
        Ok(Some(e)) => e,
        Ok(None) => return Err(format!("version {} is not registered", pointer.version)),
        Err(e) => return Err(format!("registry unreadable: {e}")),
    };
    versions::load(stores, tenant, &entry)
        .await
        .map_err(|e| e.to_string())
}

/// A small grid around the base configuration (base first, so it is always measured),
/// searched on validation splits of the training part until the budget runs out.
pub(super) fn tune_config(
    train: &Interactions,
    mut config: TrainConfig,
    budget_seconds: u64,
    k: usize,
) -> Result<(TrainConfig, Option<TuningSummary>)> {
    let a = config.als.clone();
    let mut factors = vec![a.factors, (a.factors * 2).min(256)];
    factors.dedup();
    let mut grid = tune::grid(
        &a,
        &factors,
        &[
            a.regularization,
            a.regularization / 2.0,
            a.regularization * 2.0,
        ],
        &[a.alpha, a.alpha / 2.0, a.alpha * 2.0],
        &[a.reg_exponent],
        &[a.neg_exponent],
    );
    grid.sort_by_key(|p| p != &a);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(budget_seconds);
    let (mut trials, best) = tune::search(train, &config, &grid, &[7, 8], k, &|| {
        Instant::now() < deadline
    })
    .step("tune")?;
    if let Some(best) = best {
        config.als = best;
    }
    let tried = trials.len();
    trials.truncate(MAX_RECORDED_TRIALS);
    Ok((
        config,
        Some(TuningSummary {
            budget_seconds,
            seconds: start.elapsed().as_secs_f64(),
            trials,
            tried,
        }),
    ))
}

pub(super) fn report_stage(p: &ProgressFn, step: Step, stage: Stage) {
    if let Stage::Iteration { n, of } = stage {
        p(Progress::Iteration { step, n, of });
    }
}

/// Runs CPU-bound work off the async threads, so lease renewals keep going meanwhile.
pub(super) async fn blocking<T, F>(step: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task {
            step,
            message: e.to_string(),
        })?
}
