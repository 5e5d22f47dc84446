//! The pipeline's steps and its clock: each step's start is reported, timed and checked
//! (fault point, lease) in one place, [`Run::enter`](super::pipeline).

use super::*;

/// The pipeline's steps, in order: timings, progress and fail points name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Take the tenant's retrain lock and open the job record.
    Lock,
    /// Stream every purchase and the catalog.
    Scan,
    /// Build the interaction matrix and carve the holdout.
    Interactions,
    /// Optional hyperparameter search on a validation split of the training part.
    Tune,
    /// Fit the candidate without the holdout.
    Fit,
    /// Candidate, live model and popularity on the holdout.
    Evaluate,
    /// Decide promotion.
    Gate,
    /// Fit the final model on all data, with neighbour lists and index.
    Train,
    /// Customer insight for the new version: profiles, tiers, P(alive), CLV, repurchase
    /// intervals and offer statistics, stored beside the artifact (see `crm`).
    Insight,
    /// Serialise and store the artifact under its checksum.
    Artifact,
    /// Register the version in the registry.
    Register,
    /// Compare-and-set of the live pointer.
    Flip,
    /// Finish the job record and release the lock.
    Release,
}

impl Step {
    /// Every step, in pipeline order.
    pub const ALL: [Step; 13] = [
        Step::Lock,
        Step::Scan,
        Step::Interactions,
        Step::Tune,
        Step::Fit,
        Step::Evaluate,
        Step::Gate,
        Step::Train,
        Step::Insight,
        Step::Artifact,
        Step::Register,
        Step::Flip,
        Step::Release,
    ];

    /// Stable lowercase name (logs, JSON, error messages).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Lock => "lock",
            Step::Scan => "scan",
            Step::Interactions => "interactions",
            Step::Tune => "tune",
            Step::Fit => "fit",
            Step::Evaluate => "evaluate",
            Step::Gate => "gate",
            Step::Train => "train",
            Step::Insight => "insight",
            Step::Artifact => "artifact",
            Step::Register => "register",
            Step::Flip => "flip",
            Step::Release => "release",
        }
    }

    /// Whether the step must still hold the lease when it starts: every step after the lock
    /// that reads or writes lasting state. The gate only computes; the flip renews the lease
    /// itself; the release gives it back.
    pub(super) fn checks_lease(self) -> bool {
        !matches!(self, Step::Lock | Step::Gate | Step::Flip | Step::Release)
    }

    /// What the step is doing, for progress displays.
    pub fn doing(self) -> &'static str {
        match self {
            Step::Lock => "taking the retrain lock",
            Step::Scan => "reading purchases",
            Step::Interactions => "building interactions",
            Step::Tune => "tuning hyperparameters",
            Step::Fit => "fitting the candidate",
            Step::Evaluate => "evaluating on the holdout",
            Step::Gate => "applying the promotion gate",
            Step::Train => "training on all data",
            Step::Insight => "computing customer profiles",
            Step::Artifact => "writing the artifact",
            Step::Register => "registering the version",
            Step::Flip => "flipping the live pointer",
            Step::Release => "releasing the lock",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wall time of one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepTime {
    /// The step.
    pub step: Step,
    /// Seconds spent in it.
    pub seconds: f64,
}

/// Times steps and reports each start.
pub(super) struct Clock {
    progress: ProgressFn,
    current: Option<(Step, Instant)>,
    done: Vec<StepTime>,
}

impl Clock {
    pub(super) fn new(progress: ProgressFn) -> Self {
        Self {
            progress,
            current: None,
            done: Vec::new(),
        }
    }

    /// Starts `step` on the clock and fires its fault point: every step begins here.
    pub(super) fn start(&mut self, step: Step, faults: &Faults) -> Result<()> {
        self.enter(step);
        faults.check(step)
    }

    fn enter(&mut self, step: Step) {
        self.close();
        (self.progress)(Progress::Step(step));
        self.current = Some((step, Instant::now()));
    }

    pub(super) fn close(&mut self) {
        if let Some((step, t)) = self.current.take() {
            self.done.push(StepTime {
                step,
                seconds: t.elapsed().as_secs_f64(),
            });
        }
    }

    pub(super) fn finish(&mut self) -> Vec<StepTime> {
        self.close();
        std::mem::take(&mut self.done)
    }
}
