//! `affinity clv`'s printed report: the fitted BG/NBD and Gamma-Gamma parameters and the
//! customers with the highest CLV.

use crate::clv;

pub(crate) fn print(r: &clv::Report, top: usize) {
    let p = &r.bgnbd.params;
    println!(
        "{} transactions, {} customers, unit {}, observation end {}",
        r.transactions,
        r.customers.len(),
        r.freq,
        r.observation_end
    );
    println!(
        "BG/NBD:      r = {:.4}  alpha = {:.4}  a = {:.4}  b = {:.4}  (mean log-likelihood {:.4}{})",
        p.r,
        p.alpha,
        p.a,
        p.b,
        r.bgnbd.mean_log_likelihood,
        if r.bgnbd.at_boundary {
            ", at a boundary: no dropout seen"
        } else {
            ""
        }
    );
    if let Some(g) = &r.gamma_gamma {
        println!(
            "Gamma-Gamma: p = {:.4}  q = {:.4}  v = {:.4}  ({} repeat customers)",
            g.params.p, g.params.q, g.params.v, g.customers
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    let mut rows: Vec<&clv::Row> = r.customers.iter().collect();
    rows.sort_by(|a, b| {
        b.clv
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.clv.unwrap_or(f64::NEG_INFINITY))
            .then(
                b.expected_purchases
                    .unwrap_or(0.0)
                    .total_cmp(&a.expected_purchases.unwrap_or(0.0)),
            )
    });
    println!(
        "{:<20} {:>5} {:>9} {:>9} {:>8} {:>10} {:>10}",
        "customer",
        "freq",
        "recency",
        "T",
        "P(alive)",
        format!("E[{:.0}{}]", r.horizon, r.freq),
        "CLV"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for row in rows.iter().take(top) {
        println!(
            "{:<20} {:>5} {:>9.2} {:>9.2} {:>8.3} {:>10} {:>10}",
            row.customer,
            row.frequency,
            row.recency,
            row.t,
            row.p_alive,
            opt(row.expected_purchases),
            opt(row.clv)
        );
    }
    if rows.len() > top {
        println!(
            "... {} more (by CLV, then expected purchases; --json for all)",
            rows.len() - top
        );
    }
}
