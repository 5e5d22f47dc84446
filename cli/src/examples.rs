//! The example answers `affinity demo` prints after training: what a storefront, a CRM and
//! a person would see.

use affinity_model::model::Model;
use affinity_service::demo;
use affinity_store::{Stores, TenantId};
use anyhow::Result;

pub(crate) async fn show_examples(
    stores: &Stores,
    tenant: &TenantId,
    model: &Model,
    shop: &demo::DemoShop,
) -> Result<()> {
    let catalog = stores.records.list_items(tenant).await?;
    let title = |i: u32| {
        let id = model.items.id(i);
        catalog
            .iter()
            .find(|c| c.item_id.as_str() == id)
            .map(|c| {
                format!(
                    "{} ({})",
                    c.title,
                    c.category.as_ref().map_or("-", |c| c.as_str())
                )
            })
            .unwrap_or_else(|| id.to_owned())
    };
    let short = |i: u32| {
        let t = title(i);
        t.split(" (").next().unwrap_or(&t).to_owned()
    };
    // The same reasons the API returns, worded for a person.
    let why = |r: &affinity_model::model::Reason| -> String {
        use affinity_model::model::Reason;
        match *r {
            Reason::AlsoBought {
                anchor,
                shared_buyers,
                similarity,
            } => format!(
                "{shared_buyers} customers bought it with {} (similarity {similarity:.2})",
                short(anchor)
            ),
            Reason::SimilarTaste { anchor, similarity } => {
                format!("close to {} (similarity {similarity:.2})", short(anchor))
            }
            Reason::ForYou {
                because_of: Some(p),
                similarity,
            } => format!(
                "because they bought {} (similarity {similarity:.2})",
                short(p)
            ),
            Reason::ForYou {
                because_of: None, ..
            } => "matches their purchase history".to_owned(),
            Reason::Popular { category: Some(c) } => format!(
                "popular in {}",
                model
                    .categories
                    .get(c as usize)
                    .map_or("its category", |s| s.as_str())
            ),
            Reason::Popular { category: None } => "popular overall".to_owned(),
        }
    };
    let print = |heading: String, res: Vec<affinity_model::model::Scored>| {
        println!("\n{heading}");
        for s in res {
            println!("  {:<40} {}", title(s.item), why(&s.reason));
        }
    };
    if let Some(i) = model.item_index(&shop.example_item) {
        print(
            format!("customers who bought {} also bought:", title(i)),
            model.similar(i, 5, &|_| true),
        );
    }
    let basket: Vec<u32> = shop
        .example_basket
        .iter()
        .filter_map(|b| model.item_index(b))
        .collect();
    let names: Vec<String> = basket.iter().map(|&b| title(b)).collect();
    print(
        format!("for a basket of {}:", names.join(" + ")),
        model.basket(&basket, 5, &|_| true),
    );
    let customer = affinity_store::CustomerId::parse(shop.example_customer.as_str())?;
    let history = stores
        .records
        .customer_history(tenant, &customer, 200)
        .await?;
    let purchases: Vec<affinity_model::model::Purchase> = history
        .iter()
        .filter_map(|p| {
            model
                .item_index(p.item_id.as_str())
                .map(|item| affinity_model::model::Purchase {
                    item,
                    quantity: p.quantity.get() as f32,
                    at: p.purchased_at.timestamp(),
                })
        })
        .collect();
    let bought: Vec<u32> = purchases.iter().map(|p| p.item).collect();
    print(
        format!(
            "recommended for {} ({} past purchases):",
            shop.example_customer,
            purchases.len()
        ),
        model.recommend(&purchases, 5, &|j| !bought.contains(&j)),
    );
    Ok(())
}
