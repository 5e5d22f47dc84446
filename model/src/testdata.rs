//! Seeded synthetic shops for tests: groups of items bought together, power-law
//! popularity, so models have real structure to learn.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};

use crate::interactions::{Event, Interactions, InteractionsBuilder, Weighting};

/// `customers` shoppers over `groups x per_group` items; each shopper favours one group.
pub fn shop(
    customers: usize,
    groups: usize,
    per_group: usize,
    seed: u64,
) -> (Interactions, HashMap<String, String>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut b = InteractionsBuilder::new();
    let mut cats = HashMap::new();
    for g in 0..groups {
        for j in 0..per_group {
            cats.insert(format!("g{g}-{j}"), format!("cat{g}"));
        }
    }
    for c in 0..customers {
        let g = c % groups;
        let n = 3 + rng.random_range(0..8);
        for k in 0..n {
            let (gg, j) = if rng.random::<f32>() < 0.85 {
                // Power law inside the group: low j is popular.
                let j = ((rng.random::<f32>().powi(2)) * per_group as f32) as usize;
                (g, j.min(per_group - 1))
            } else {
                (rng.random_range(0..groups), rng.random_range(0..per_group))
            };
            b.push(Event {
                customer: &format!("c{c}"),
                item: &format!("g{gg}-{j}"),
                quantity: 1.0,
                at: 1_700_000_000 + (c * 100 + k) as i64,
            })
            .expect("valid event");
        }
    }
    (b.build(&Weighting::default()).expect("non-empty"), cats)
}
