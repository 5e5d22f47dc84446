//! `affinity customers delete|consent`: a customer's data rights from the command line, the
//! same operations as `DELETE /v1/customers/{id}` and `PUT /v1/customers/{id}/consent`.

use affinity_service::customer_data;
use affinity_service::customer_data::CustomerHasher;
use affinity_service::settings::Settings;
use affinity_store::{Consent, CustomerId, Stores, TenantId};
use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CustomersCmd {
    /// Erase a customer: purchases, offer events, consent and flags, and their entry in
    /// every stored customer-insight snapshot. Prints what was removed; a repeat removes
    /// nothing.
    Delete {
        /// The customer id.
        customer: String,
        /// Key of the keyed hash kept in the audit record (hex); default: the deployment's
        /// `--log-hash-key` / AFFINITY_LOG_HASH_KEY, so audit records match across processes.
        #[arg(long)]
        hash_key: Option<String>,
        /// Who asks, for the audit record.
        #[arg(long, env = "USER", default_value = "unknown")]
        actor: String,
    },
    /// Record what a customer consents to.
    Consent {
        /// The customer id.
        customer: String,
        /// Recommendations from their purchase history.
        #[arg(long, action = clap::ArgAction::Set, required = true)]
        personalization: bool,
        /// Offers, audiences and batch sends.
        #[arg(long, action = clap::ArgAction::Set, required = true)]
        marketing: bool,
    },
}

/// Runs one `customers` command against the configured store.
pub async fn run(
    stores: &Stores,
    tenant: &TenantId,
    settings: &Settings,
    cmd: CustomersCmd,
    json: bool,
) -> Result<()> {
    match cmd {
        CustomersCmd::Delete {
            customer,
            hash_key,
            actor,
        } => {
            let id = CustomerId::parse(customer).context("customer id")?;
            let key = match hash_key.filter(|k| !k.is_empty()) {
                Some(k) => Some(hex::decode(k).context("--hash-key must be hex")?),
                None => settings.retrain.hash_key.clone(),
            };
            let erased = customer_data::erase_customer(
                stores,
                &CustomerHasher::new(key),
                tenant,
                &id,
                &format!("cli:{actor}"),
                chrono::Utc::now(),
            )
            .await
            .context("erase the customer")?;
            if json {
                println!("{}", serde_json::to_string(&erased)?);
            } else if erased.is_empty() {
                println!("nothing left to erase (audit record {})", erased.audit_id);
            } else {
                println!(
                    "erased: {} purchases, {} offer events, {} customer records, {} insight snapshots (audit record {})",
                    erased.purchases,
                    erased.offer_events,
                    erased.customer_records,
                    erased.insight_snapshots,
                    erased.audit_id
                );
            }
        }
        CustomersCmd::Consent {
            customer,
            personalization,
            marketing,
        } => {
            let id = CustomerId::parse(customer).context("customer id")?;
            let consent = Consent {
                personalization,
                marketing,
            };
            let record =
                customer_data::set_consent(stores, tenant, &id, consent, chrono::Utc::now())
                    .await
                    .context("record the consent")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "customer_id": record.customer_id.as_str(),
                        "consent": record.consent,
                        "updated_at": record.updated_at,
                    })
                );
            } else {
                println!(
                    "{}: personalization {}, marketing {}",
                    record.customer_id, personalization, marketing
                );
            }
        }
    }
    Ok(())
}
