//! The catalog item, with the flags serving needs for filters.

use super::*;

/// A catalog item with the flags serving needs for filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// Item id.
    pub item_id: ItemId,
    /// Display title.
    pub title: String,
    /// Category, for category filters and fallbacks.
    pub category: Option<Category>,
    /// Price in integer minor units.
    pub price_minor: i64,
    /// Currency of the price.
    pub currency: Option<Currency>,
    /// Whether the item can be recommended now.
    pub in_stock: bool,
    /// When the item was added (for "new arrivals").
    pub created_at: DateTime<Utc>,
    /// Whether re-buying makes sense (consumables), used by offers.
    pub repurchasable: bool,
    /// Free-form attributes (a JSON object), optional.
    pub attributes: Option<serde_json::Value>,
}

impl CatalogItem {
    /// Checks price (0..=[`MAX_PRICE_MINOR`]), text length, timestamp range and attribute size.
    pub fn validate(&self) -> Result<()> {
        validate_price("price_minor", self.price_minor)?;
        validate_text("title", &self.title)?;
        validate_time("created_at", self.created_at)?;
        if let Some(a) = &self.attributes {
            if !a.is_object() {
                return Err(Error::invalid("attributes", "must be a JSON object"));
            }
            validate_json("attributes", a)?;
        }
        Ok(())
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut c = self.clone();
        c.created_at = normalize_time(c.created_at);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_price_is_bounded() {
        let mut item = CatalogItem {
            item_id: ItemId::parse("i1").unwrap(),
            title: "Beans".into(),
            category: None,
            price_minor: MAX_PRICE_MINOR,
            currency: None,
            in_stock: true,
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
            repurchasable: false,
            attributes: None,
        };
        assert!(item.validate().is_ok());
        item.price_minor = MAX_PRICE_MINOR + 1;
        assert!(
            item.validate()
                .unwrap_err()
                .to_string()
                .contains("price_minor")
        );
        item.price_minor = -1;
        assert!(
            item.validate()
                .unwrap_err()
                .to_string()
                .contains("price_minor")
        );
    }
}
