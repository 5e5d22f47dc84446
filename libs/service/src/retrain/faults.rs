//! Failure injection: tests make the pipeline fail, or die, at any step and then check that
//! the live model, the lock and the next run are all as they should be.

use super::Step;
use crate::error::{Error, Result};

/// Where and how the pipeline is made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// The step returns an error: the pipeline cleans up (job marked failed, lock released).
    Error(Step),
    /// The process "dies" at the step: no cleanup at all, the lock is left to expire and
    /// the job record stays `running`, exactly as after a killed Lambda.
    Crash(Step),
}

impl FailPoint {
    /// The step this fail point fires at.
    pub fn step(self) -> Step {
        match self {
            FailPoint::Error(s) | FailPoint::Crash(s) => s,
        }
    }

    /// Every fail point: each step, failing and crashing.
    pub fn all() -> impl Iterator<Item = FailPoint> {
        Step::ALL
            .into_iter()
            .flat_map(|s| [FailPoint::Error(s), FailPoint::Crash(s)])
    }
}

/// The fail points armed for one pipeline; empty (the default) in production.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    armed: Vec<FailPoint>,
}

impl Faults {
    /// No failures.
    pub fn none() -> Self {
        Self::default()
    }

    /// Fails (or crashes) at one step.
    pub fn at(point: FailPoint) -> Self {
        Self { armed: vec![point] }
    }

    /// Called by the pipeline as it enters `step`.
    pub(crate) fn check(&self, step: Step) -> Result<()> {
        match self.armed.iter().find(|p| p.step() == step) {
            None => Ok(()),
            Some(p) => Err(Error::Injected {
                step: step.as_str(),
                crash: matches!(p, FailPoint::Crash(_)),
            }),
        }
    }
}

impl Error {
    /// True for an injected crash: the pipeline must not clean up after it.
    pub(crate) fn is_crash(&self) -> bool {
        matches!(self, Error::Injected { crash: true, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_points_fire_only_at_their_step() {
        let f = Faults::at(FailPoint::Crash(Step::Fit));
        assert!(f.check(Step::Scan).is_ok());
        let e = f.check(Step::Fit).unwrap_err();
        assert!(e.is_crash());
        let e = Faults::at(FailPoint::Error(Step::Flip))
            .check(Step::Flip)
            .unwrap_err();
        assert!(!e.is_crash());
        assert!(Faults::none().check(Step::Flip).is_ok());
        assert_eq!(FailPoint::all().count(), Step::ALL.len() * 2);
    }
}
