//! `affinity profile <customer>` and `affinity offers dry-run`: the data team's view of
//! the customer's CRM figures, read from the live model version and its CRM snapshot.

use std::path::Path;
use std::sync::Arc;

use affinity_model::crm::offers::{DryRun, EngineConfig, Offer};
use affinity_service::crm::{self, CrmSnapshot};
use affinity_service::loader::{ModelCache, Serving};
use affinity_store::{CustomerId, OfferId, Stores, TenantId};
use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

async fn live(stores: &Stores, tenant: &TenantId) -> Result<(Arc<Serving>, Arc<CrmSnapshot>)> {
    let cache = ModelCache::new(stores.clone(), std::time::Duration::from_secs(60));
    let serving = cache.get(tenant).await.context("load the live model")?;
    let snapshot = cache
        .crm(tenant, &serving)
        .await
        .context("read the customer insight")?
        .ok_or_else(|| {
        anyhow!(
            "model version {} has no customer insight; retrain (`affinity train`) to compute it",
            serving.version.version.as_str()
        )
    })?;
    Ok((serving, snapshot))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// Prints one customer's profile.
pub async fn profile(
    stores: &Stores,
    tenant: &TenantId,
    customer: &str,
    as_json: bool,
) -> Result<()> {
    let id = CustomerId::parse(customer).context("customer id")?;
    let (serving, snapshot) = live(stores, tenant).await?;
    let model = &serving.model;
    let data = crm::read_customer(stores.records.as_ref(), tenant, model, &snapshot, &id).await?;
    let known = snapshot.profiles.get(&customer.to_owned()).is_some();
    let due = crm::due_items(
        model,
        &snapshot,
        &data.purchases,
        Utc::now().timestamp(),
        &EngineConfig::default(),
    );
    let due: Vec<serde_json::Value> = due
        .iter()
        .map(|d| {
            json!({
                "item_id": d.item.map(|i| model.items.id(i).to_owned()),
                "category": d.category.and_then(|c| model.categories.get(c as usize).cloned()),
                "days_since": d.days_since,
                "typical_days": d.typical_days,
            })
        })
        .collect();
    let p = &data.profile;
    let config = &snapshot.profiles.config;
    if as_json {
        let out = json!({
            "customer_id": customer,
            "model_version": serving.version.version.as_str(),
            "observation_end": DateTime::<Utc>::from_timestamp(snapshot.profiles.observation_end, 0),
            "known": known,
            "consent": {
                "personalization": data.consent.personalization,
                "marketing": data.consent.marketing,
            },
            "profile": p,
            "rfm_code": p.rfm.code(),
            "horizon_days": config.horizon_days,
            "clv_months": config.clv_months,
            "due": due,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "customer {customer} (model {}{})",
        serving.version.version.as_str(),
        if known {
            ""
        } else {
            "; no purchase in the window: newcomer figures"
        }
    );
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(vec!["figure", "value"]);
    t.add_row(vec!["tier".to_owned(), p.tier.clone()]);
    t.add_row(vec![
        "RFM (recency, frequency, monetary; 5 = best)".to_owned(),
        format!("{} ({} {} {})", p.rfm.code(), p.rfm.r, p.rfm.f, p.rfm.m),
    ]);
    t.add_row(vec![
        "days since last purchase".to_owned(),
        format!("{:.0}", p.days_since_last),
    ]);
    t.add_row(vec!["repeat purchases".to_owned(), p.frequency.to_string()]);
    t.add_row(vec![
        "total spend".to_owned(),
        format!("{:.2}", p.total_spend),
    ]);
    t.add_row(vec!["P(alive)".to_owned(), opt(p.p_alive, 3)]);
    t.add_row(vec!["churn risk".to_owned(), opt(p.churn_risk, 3)]);
    t.add_row(vec![
        format!("expected purchases, next {} days", config.horizon_days),
        opt(p.expected_purchases, 2),
    ]);
    t.add_row(vec![
        format!("CLV, {} months", config.clv_months),
        opt(p.clv, 2),
    ]);
    t.add_row(vec![
        "consent".to_owned(),
        format!(
            "personalization {}, marketing {}",
            data.consent.personalization, data.consent.marketing
        ),
    ]);
    println!("{t}");
    if due.is_empty() {
        println!("nothing due to buy again");
    } else {
        println!("due to buy again:");
        for d in &due {
            let what = d["item_id"]
                .as_str()
                .or(d["category"].as_str())
                .unwrap_or("?");
            println!(
                "  {what}: {:.0} days since, typically every {:.0}",
                d["days_since"].as_f64().unwrap_or(0.0),
                d["typical_days"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// Dry run of a stored offer (`--offer-id`) or an offer document in a file (`--file`).
pub async fn dry_run(
    stores: &Stores,
    tenant: &TenantId,
    offer_id: Option<&str>,
    file: Option<&Path>,
    channel: &str,
    as_json: bool,
) -> Result<()> {
    let offer = match (offer_id, file) {
        (Some(id), None) => {
            let oid = OfferId::parse(id).context("offer id")?;
            let record = stores
                .records
                .get_offer(tenant, &oid)
                .await?
                .ok_or_else(|| anyhow!("no offer {id:?} (see GET /v1/offers)"))?;
            crm::offer_from_record(&record)?
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            let doc: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            Offer::parse("~draft", &doc).with_context(|| format!("{}", path.display()))?
        }
        _ => bail!("give --offer-id or --file"),
    };
    let (serving, snapshot) = live(stores, tenant).await?;
    let d: DryRun = crm::dry_run(
        stores.records.as_ref(),
        tenant,
        &serving.model,
        &snapshot,
        offer,
        channel,
        Utc::now().timestamp(),
    )
    .await?;
    if as_json {
        let out = json!({
            "offer_id": offer_id,
            "model_version": serving.version.version.as_str(),
            "channel": channel,
            "customers": d.customers,
            "eligible": d.eligible,
            "first": d.first,
            "eligible_by_tier": d.eligible_by_tier,
            "first_by_tier": d.first_by_tier,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} on {channel}, model {}: {} of {} customers eligible, {} would get it as their first offer",
        offer_id.unwrap_or("draft offer"),
        serving.version.version.as_str(),
        d.eligible,
        d.customers,
        d.first
    );
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(vec!["tier", "eligible", "first offer"]);
    let tiers: std::collections::BTreeSet<&String> = d
        .eligible_by_tier
        .keys()
        .chain(d.first_by_tier.keys())
        .collect();
    for tier in tiers {
        t.add_row(vec![
            tier.clone(),
            d.eligible_by_tier
                .get(tier)
                .copied()
                .unwrap_or(0)
                .to_string(),
            d.first_by_tier.get(tier).copied().unwrap_or(0).to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}
