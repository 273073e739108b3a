//! The demo store `cartridge serve --demo` starts with: a small catalog in a category tree,
//! two stock locations, stock, and two shipping methods. Seeded only into an empty catalog, so restarting the demo
//! keeps what was bought and changed.

use std::collections::BTreeMap;

use crate::catalog::{Catalog, NewProduct, NewVariant};
use crate::inventory::Inventory;
use crate::shipping::{NewShippingMethod, Shipping};

fn variant(sku: &str, title: &str, options: &[(&str, &str)], eur: u32, usd: u32) -> NewVariant {
    NewVariant {
        sku: sku.to_owned(),
        title: title.to_owned(),
        options: options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        prices: BTreeMap::from([("EUR".to_owned(), eur), ("USD".to_owned(), usd)]),
    }
}

fn product(title: &str, category: &str, material: &str, variants: Vec<NewVariant>) -> NewProduct {
    NewProduct {
        title: title.to_owned(),
        description: format!("{title}, from the Cartridge demo store."),
        categories: vec![category.to_owned()],
        attributes: BTreeMap::from([("material".to_owned(), material.to_owned())]),
        variants,
    }
}

/// Seeds the demo catalog and stock unless the catalog already has products. Returns whether
/// it seeded.
pub async fn seed(
    catalog: &Catalog,
    inventory: &Inventory,
    shipping: &Shipping,
    now: i64,
) -> anyhow::Result<bool> {
    if !catalog.list(&Default::default()).await?.is_empty() {
        return Ok(false);
    }
    for (id, parent, name) in [
        ("apparel", None, "Apparel"),
        ("shirts", Some("apparel"), "Shirts"),
        ("socks", Some("apparel"), "Socks"),
        ("home", None, "Home"),
    ] {
        catalog.create_category(id, parent, name).await?;
    }
    inventory
        .upsert_location("berlin", "Berlin warehouse", 1)
        .await?;
    inventory
        .upsert_location("reno", "Reno warehouse", 2)
        .await?;
    let products = [
        product(
            "Organic Tee",
            "shirts",
            "cotton",
            vec![
                variant("TEE-S", "S", &[("size", "S")], 1999, 2199),
                variant("TEE-M", "M", &[("size", "M")], 1999, 2199),
                variant("TEE-L", "L", &[("size", "L")], 1999, 2199),
            ],
        ),
        product(
            "Merino Socks",
            "socks",
            "wool",
            vec![variant("SOCK-M", "One size", &[], 500, 600)],
        ),
        product(
            "Ceramic Mug",
            "home",
            "stoneware",
            vec![variant("MUG", "350 ml", &[], 899, 999)],
        ),
    ];
    for p in &products {
        catalog.create_product(p, now).await?;
    }
    for (sku, berlin, reno) in [
        ("TEE-S", 20, 10),
        ("TEE-M", 30, 20),
        ("TEE-L", 5, 40),
        ("SOCK-M", 100, 0),
        ("MUG", 1, 12),
    ] {
        for (location, quantity) in [("berlin", berlin), ("reno", reno)] {
            if quantity > 0 {
                inventory
                    .adjust(sku, location, quantity, "demo stock", now)
                    .await?;
            }
        }
    }
    for (code, name, carrier, countries, eur, usd) in [
        ("standard", "Standard (3–5 days)", None, None, 495, 595),
        (
            "express",
            "Express (next day)",
            Some("DHL"),
            Some(vec!["DE".to_owned(), "AT".to_owned(), "NL".to_owned()]),
            1295,
            1495,
        ),
    ] {
        let created = shipping
            .create(
                &NewShippingMethod {
                    code: code.to_owned(),
                    name: name.to_owned(),
                    carrier: carrier.map(str::to_owned),
                    countries,
                    position: 0,
                    rates: BTreeMap::from([("EUR".to_owned(), eur), ("USD".to_owned(), usd)]),
                },
                now,
            )
            .await;
        // An earlier, interrupted seeding may have created it already.
        match created {
            Ok(_) | Err(crate::shipping::ShippingError::CodeTaken(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}
