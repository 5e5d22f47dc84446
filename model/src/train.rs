//! Training: a [`Trainer`] fits a served model, a candidate for the promotion gate, or
//! embeddings for evaluation; a [`Candidate`] refits into the served model. The steps of a
//! fit (ALS, neighbour lists, popularity, Gram matrix, index) end in [`Model::assemble`].

use std::collections::{BTreeMap, HashMap};

use crate::als;
use crate::index::{HnswIndex, HnswParams, ItemVectors};
use crate::interactions::Interactions;
use crate::model::{DataCounts, IndexChoice, Manifest, Model, Parts, Stage, TrainConfig};
use crate::neighbours::Neighbours;
use crate::popularity::Popularity;
use crate::{Error, Result};

/// Fits models, as `implicit`'s model objects do: configured once, then
/// [`Trainer::train`] for a served model from scratch, [`Trainer::fit_candidate`] for the
/// promotion gate's candidate (which [`Candidate::refit`] turns into the served model), or
/// [`Trainer::fit_for_evaluation`] for offline metrics and tuning.
#[derive(Clone, Copy)]
pub struct Trainer<'a> {
    config: &'a TrainConfig,
    version: &'a str,
    trained_at: i64,
    progress: &'a (dyn Fn(Stage) + Sync),
}

fn no_progress(_: Stage) {}

impl<'a> Trainer<'a> {
    /// A trainer for `config`; the model version is empty and the training time 0 until set.
    pub fn new(config: &'a TrainConfig) -> Self {
        Self {
            config,
            version: "",
            trained_at: 0,
            progress: &no_progress,
        }
    }

    /// The version the fitted model carries in its manifest.
    pub fn version(self, version: &'a str) -> Self {
        Self { version, ..self }
    }

    /// The training time (unix seconds) recorded in the manifest.
    pub fn trained_at(self, trained_at: i64) -> Self {
        Self { trained_at, ..self }
    }

    /// Where the stages of a fit are reported, for progress bars and logs.
    pub fn progress(self, progress: &'a (dyn Fn(Stage) + Sync)) -> Self {
        Self { progress, ..self }
    }

    /// A served model from scratch. `item_categories` maps item ids to category names (items
    /// absent from `data` but present there are kept as never-bought items so popularity per
    /// category and filters know them).
    pub fn train(
        &self,
        data: &Interactions,
        item_categories: &HashMap<String, String>,
    ) -> Result<Model> {
        self.build(data, item_categories, Fit::Served)
            .map(|(m, _)| m)
    }

    /// The embeddings only (no neighbour lists, exact index), with what [`Candidate::refit`]
    /// needs to continue the fit.
    pub fn fit_candidate(&self, data: &Interactions) -> Result<Candidate> {
        let (model, user) = self.build(data, &HashMap::new(), Fit::Candidate)?;
        Ok(Candidate { model, user })
    }

    /// The embeddings only: what offline evaluation, the promotion gate and tuning need,
    /// without the item x item pass of a served model. [`Model::evaluate`] gives the same
    /// figures as for a model from [`Trainer::train`] on the same data.
    pub fn fit_for_evaluation(&self, data: &Interactions) -> Result<Model> {
        self.fit_candidate(data).map(|c| c.model)
    }

    fn build(
        &self,
        data: &Interactions,
        item_categories: &HashMap<String, String>,
        fit: Fit,
    ) -> Result<(Model, Vec<f32>)> {
        build(self, data, item_categories, fit)
    }
}

/// What a fit produces and where it starts.
enum Fit {
    /// Embeddings only, from scratch.
    Candidate,
    /// A served model, from scratch.
    Served,
    /// A served model, continuing from a candidate's factors for `iterations` alternations.
    Refit(als::AlsFactors, usize),
}

/// A model fitted for the promotion gate, with the customer factors the final fit starts from.
pub struct Candidate {
    /// The candidate as evaluated (no neighbour lists, exact index).
    pub model: Model,
    /// Customers x factors, row-major, in the training data's customer order.
    user: Vec<f32>,
}

impl Candidate {
    /// The served model, fitted by `iterations` ALS alternations on `data` starting from the
    /// candidate's factors (`data` must share the candidate's id maps: the candidate's data is
    /// `data` minus the holdout). The candidate has already converged on all but the held-out
    /// purchases, so a few alternations take those in for a fraction of a fit from scratch.
    pub fn refit(
        self,
        trainer: &Trainer<'_>,
        data: &Interactions,
        item_categories: &HashMap<String, String>,
        iterations: usize,
    ) -> Result<Model> {
        let start = als::AlsFactors {
            factors: self.model.vectors.dim(),
            item: self.model.vectors.as_slice().to_vec(),
            user: self.user,
            negative_weights: Vec::new(),
        };
        trainer
            .build(data, item_categories, Fit::Refit(start, iterations))
            .map(|(m, _)| m)
    }
}

fn build(
    trainer: &Trainer<'_>,
    data: &Interactions,
    item_categories: &HashMap<String, String>,
    fit: Fit,
) -> Result<(Model, Vec<f32>)> {
    let Trainer {
        config,
        version: model_version,
        trained_at,
        progress,
    } = *trainer;
    let served = !matches!(fit, Fit::Candidate);
    if config.neighbours == 0 || config.neighbours > 500 {
        return Err(Error::InvalidParameter {
            name: "neighbours",
            reason: "must be between 1 and 500".into(),
        });
    }
    let mut factors = match fit {
        Fit::Candidate | Fit::Served => {
            let of = config.als.iterations;
            als::fit(data, &config.als, &|n| progress(Stage::Iteration { n, of }))?
        }
        Fit::Refit(start, of) => als::refit(data, &config.als, start, of, &|n| {
            progress(Stage::Iteration { n, of })
        })?,
    };
    let user = std::mem::take(&mut factors.user);
    let d = config.als.factors;
    let n = data.n_items();
    let neighbours = if served {
        progress(Stage::Neighbours);
        Neighbours::build(&factors.item, d, &data.item_users, config.neighbours)
    } else {
        // One empty slot per item: the shape a model needs, none of the cost.
        Neighbours::empty(n)
    };
    let mut categories: Vec<String> = item_categories.values().cloned().collect();
    categories.sort();
    categories.dedup();
    let item_category: Vec<Option<u32>> = data
        .items
        .ids()
        .iter()
        .map(|id| {
            item_categories
                .get(id)
                .and_then(|c| categories.binary_search(c).ok())
                .map(|c| c as u32)
        })
        .collect();
    let popularity = Popularity::build(&data.item_users, &item_category, categories.len());
    let gram = als::weighted_gram(&factors.item, &factors.negative_weights, d);
    let negative_weights = factors.negative_weights;
    let manifest = Manifest {
        format_version: crate::artifact::FORMAT_VERSION,
        model_version: model_version.to_owned(),
        trained_at,
        data_watermark: data.watermark,
        config: config.clone(),
        counts: DataCounts {
            customers: data.n_customers(),
            items: data.n_items(),
            purchases: data.events,
            pairs: data.nnz(),
        },
        metrics: BTreeMap::new(),
    };
    let vectors = ItemVectors::new(factors.item.into(), d)?;
    let hnsw = if served {
        progress(Stage::Index);
        build_hnsw(&vectors, config.index)?
    } else {
        None
    };
    Model::assemble(Parts {
        manifest,
        items: data.items.clone(),
        categories,
        item_category,
        vectors,
        gram,
        negative_weights,
        neighbours,
        popularity,
        hnsw,
    })
    .map(|m| (m, user))
}

fn build_hnsw(vectors: &ItemVectors, choice: IndexChoice) -> Result<Option<HnswIndex>> {
    let params = match choice {
        IndexChoice::Exact => return Ok(None),
        IndexChoice::Auto { hnsw_above } if vectors.len() <= hnsw_above => return Ok(None),
        IndexChoice::Auto { .. } => HnswParams::default(),
        IndexChoice::Hnsw(params) => params,
    };
    Ok(Some(HnswIndex::build(vectors.clone(), params)?))
}
